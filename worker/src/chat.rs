//! Chat templates: a conversation rendered with the model's own Jinja template, the way
//! transformers renders it (`trim_blocks`, `lstrip_blocks`, Python string and dict methods,
//! `raise_exception`, `strftime_now`), ending with the generation prompt.
use std::fmt;

use minijinja::{context, Environment, Error, ErrorKind};

pub use rbee_proto::{ChatMessage, Role};

/// A turn of `role` saying `content`.
pub fn message(role: Role, content: impl Into<String>) -> ChatMessage {
    ChatMessage {
        role,
        content: content.into(),
    }
}

/// Where a model's template came from (reported in `Ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateSource {
    /// `tokenizer.chat_template` in the GGUF metadata.
    Gguf,
    /// `chat_template` in `tokenizer_config.json`.
    TokenizerConfig,
    /// A `chat_template.jinja` file beside the model.
    JinjaFile,
}

impl TemplateSource {
    /// The name `Ready` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateSource::Gguf => "gguf",
            TemplateSource::TokenizerConfig => "tokenizer_config.json",
            TemplateSource::JinjaFile => "chat_template.jinja",
        }
    }
}

impl fmt::Display for TemplateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where it came from.
    pub source: TemplateSource,
    bos_token: String,
    eos_token: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Instructions one render may execute: a long conversation through a real template takes a few
/// thousand.
const RENDER_FUEL: u64 = 5_000_000;

/// `strftime_now(format)`: the local time, as templates that print today's date ask for it.
fn strftime_now(format: String) -> Result<String, Error> {
    let bad = || Error::new(ErrorKind::InvalidOperation, "strftime_now: invalid format");
    let c_fmt = std::ffi::CString::new(format).map_err(|_| bad())?;
    let mut buf = [0u8; 256];
    // SAFETY: `now` and `tm` are plain values we own; strftime writes at most `buf.len()` bytes
    // into `buf` and returns how many it wrote.
    let n = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return Err(bad());
        }
        libc::strftime(buf.as_mut_ptr().cast(), buf.len(), c_fmt.as_ptr(), &tm)
    };
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `raise_exception(message)`: how templates refuse a conversation they cannot render.
fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compile `source_text`; the error names what the template engine could not parse.
    pub fn new(
        source_text: String,
        source: TemplateSource,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self, String> {
        let mut env = Environment::new();
        // A template comes with the model file, from wherever it was downloaded: bound the work
        // one render may do, so a hostile or broken one fails instead of hanging the worker.
        env.set_fuel(Some(RENDER_FUEL));
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source_text)
            .map_err(|e| format!("the chat template ({source}) does not parse: {e}"))?;
        Ok(Self {
            env,
            source,
            bos_token,
            eos_token,
        })
    }

    /// The conversation as the text the model was trained on, ending with the assistant's
    /// turn opened when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let tpl = self.env.get_template("chat").map_err(|e| e.to_string())?;
        tpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| {
            let detail = e
                .detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string());
            format!("the chat template ({}) failed: {detail}", self.source)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn tpl(text: &str) -> ChatTemplate {
        ChatTemplate::new(
            text.into(),
            TemplateSource::Gguf,
            "<s>".into(),
            "</s>".into(),
        )
        .unwrap()
    }

    #[test]
    fn chatml_renders_with_the_generation_prompt() {
        let msgs = [
            message(Role::System, "Be brief."),
            message(Role::User, "Hi"),
        ];
        assert_eq!(
            tpl(CHATML).render(&msgs, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(!tpl(CHATML)
            .render(&msgs, false)
            .unwrap()
            .ends_with("assistant\n"));
    }

    #[test]
    fn python_methods_blocks_and_special_tokens_work() {
        // Llama-2 style: bos/eos, .strip(), raise_exception on a bad order, trim/lstrip blocks.
        let t = tpl("{{ bos_token }}{% for m in messages %}\n  {% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}\n  {% if m['role'] == 'user' %}[INST] {{ m['content'].strip() }} [/INST]{% else %}{{ m['content'] | trim }}{{ eos_token }}{% endif %}\n{% endfor %}");
        let ok = [
            message(Role::User, "  Hello "),
            message(Role::Assistant, "Hi! "),
        ];
        assert_eq!(
            t.render(&ok, true).unwrap(),
            "<s>[INST] Hello [/INST]Hi!</s>"
        );
        let bad = [message(Role::Assistant, "first")];
        let e = t.render(&bad, true).unwrap_err();
        assert!(e.contains("Conversation roles must alternate"), "{e}");
        assert!(e.contains("gguf"), "{e}");
    }

    #[test]
    fn strftime_now_and_broken_templates() {
        let year = tpl("{{ strftime_now('%Y') }}").render(&[], true).unwrap();
        assert_eq!(year.len(), 4, "{year}");
        assert!(year.starts_with("20"), "{year}");
        let e = ChatTemplate::new(
            "{% for %}".into(),
            TemplateSource::JinjaFile,
            String::new(),
            String::new(),
        )
        .unwrap_err();
        assert!(
            e.contains("chat_template.jinja") && e.contains("does not parse"),
            "{e}"
        );
    }

    #[test]
    fn constructs_real_templates_use_render_as_in_python() {
        // The constructs of the Llama 3, Qwen 2.5, DeepSeek-R1 and Gemma 3 templates, in one.
        let t = tpl(concat!(
            "{%- set ns = namespace(system='') -%}",
            "{%- if messages[0].role == 'system' -%}{%- set ns.system = messages[0].content -%}",
            "{%- set rest = messages[1:] -%}{%- else -%}{%- set rest = messages -%}{%- endif -%}",
            "{{ bos_token }}[{{ ns.system | trim }}]",
            "{%- for m in rest -%}",
            "{%- if m.content is string and m.content.startswith('!') -%}{{ raise_exception('no bangs') }}{%- endif -%}",
            "{%- set c = m.content.split('</think>')[-1] -%}",
            "<{{ m.role }}>{{ c | tojson }}{% if loop.last %}.{% endif %}",
            "{%- endfor -%}",
            "{%- if add_generation_prompt %}<assistant>{% endif -%}",
        ));
        let msgs = [
            message(Role::System, "  Be brief.  "),
            message(Role::User, "hi \"there\""),
            message(Role::Assistant, "<think>hmm</think>hello"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<s>[Be brief.]<user>\"hi \\\"there\\\"\"<assistant>\"hello\".<assistant>"
        );
        let e = t.render(&[message(Role::User, "!")], true).unwrap_err();
        assert!(e.contains("no bangs"), "{e}");
        let date = tpl("{{ strftime_now('%d %b %Y') }}")
            .render(&[], true)
            .unwrap();
        assert_eq!(date.len(), 11, "{date}");
    }

    #[test]
    fn a_template_that_never_ends_runs_out_of_fuel() {
        let t = tpl(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        );
        let e = t.render(&[], true).unwrap_err();
        assert!(e.contains("fuel"), "{e}");
        // A long real conversation stays far below the bound.
        let many: Vec<ChatMessage> = (0..500)
            .map(|i| {
                message(
                    if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    "some words",
                )
            })
            .collect();
        assert!(tpl(CHATML).render(&many, true).is_ok());
    }
}
