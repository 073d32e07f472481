//! What a model reference means: a local path, or a model on the Hugging Face hub.
use std::path::PathBuf;

pub use rbee_proto::types::HubRef;

use crate::StoreError;

/// A parsed model reference: what `rbee-worker --model` and `Spawn.model` accept once a name
/// has been resolved (see [`crate::Store::find`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A local `.gguf` file or a safetensors model directory.
    Path(PathBuf),
    /// `hf:ORG/REPO[@REVISION][:FILE]`, resolved through the Hugging Face cache.
    Hub(HubRef),
}

impl ModelRef {
    /// Parse a reference; `hf:` references must be well formed, anything else is a path.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        match HubRef::parse(s) {
            Some(Ok(h)) => Ok(ModelRef::Hub(h)),
            Some(Err(why)) => Err(StoreError::BadReference(why)),
            None if s.trim().is_empty() => Err(StoreError::BadReference(format!(
                "invalid model reference `{s}`: use a .gguf file, a safetensors directory, or \
                 hf:ORG/REPO[@REVISION][:FILE]"
            ))),
            None => Ok(ModelRef::Path(PathBuf::from(s))),
        }
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelRef::Path(p) => write!(f, "{}", p.display()),
            ModelRef::Hub(h) => {
                write!(f, "hf:{}", h.repo)?;
                if let Some(r) = &h.revision {
                    write!(f, "@{r}")?;
                }
                if let Some(file) = &h.file {
                    write!(f, ":{file}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_references_parse() {
        assert_eq!(
            ModelRef::parse("hf:HuggingFaceTB/SmolLM2-135M@v1:model.gguf").unwrap(),
            ModelRef::Hub(HubRef {
                repo: "HuggingFaceTB/SmolLM2-135M".into(),
                revision: Some("v1".into()),
                file: Some("model.gguf".into())
            })
        );
        assert_eq!(
            ModelRef::parse("hf:a/b").unwrap(),
            ModelRef::Hub(HubRef {
                repo: "a/b".into(),
                revision: None,
                file: None
            })
        );
        for bad in ["hf:", "hf:a", "hf:a/b/c", "hf:a/b@", "hf:a/b:", ""] {
            let e = ModelRef::parse(bad).unwrap_err();
            assert!(
                e.to_string().starts_with("invalid model reference"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn references_print_as_they_parse() {
        for s in [
            "hf:a/b",
            "hf:a/b@v2",
            "hf:a/b:m.gguf",
            "hf:a/b@v2:m.gguf",
            "/m/x.gguf",
        ] {
            assert_eq!(ModelRef::parse(s).unwrap().to_string(), s);
        }
    }
}
