//! A real terminal for the end-to-end tests: a tmux server on a private socket, one session,
//! killed on drop (pass or fail; a failing test prints the last screen it saw).
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::run::{run_bounded, Run};

/// One tmux server (`-L socket`) whose commands target `session`.
pub struct Tmux {
    socket: String,
    session: String,
    last: std::cell::RefCell<String>,
}

impl Tmux {
    /// A server named after `name`, this process and the clock (tests run in parallel); nothing
    /// starts until the test runs `new-session` through [`Tmux::cmd`].
    pub fn new(name: &str, session: &str) -> Tmux {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Tmux {
            socket: format!("rbee-{name}-{}-{nanos}", std::process::id()),
            session: session.into(),
            last: Default::default(),
        }
    }

    /// The session's name (`-t`).
    pub fn session(&self) -> &str {
        &self.session
    }

    /// `tmux -L socket ARGS`, not run yet.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-L").arg(&self.socket).args(args);
        c
    }

    /// Run a tmux command with a bound.
    pub fn run(&self, args: &[&str]) -> Run {
        run_bounded(self.cmd(args), Duration::from_secs(10))
    }

    /// The pane as text, one line per row.
    pub fn capture(&self) -> String {
        let r = self.run(&["capture-pane", "-p", "-t", &self.session]);
        if r.status.success() {
            *self.last.borrow_mut() = r.stdout.clone();
        }
        r.stdout
    }

    /// tmux key names (`Enter`, `Escape`, `s`); a pause after each so the program reads them one
    /// at a time (an Escape directly followed by a letter would read as Alt+letter).
    pub fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.run(&["send-keys", "-t", &self.session, k]).ok();
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Text typed as is.
    pub fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", &self.session, "-l", text])
            .ok();
        std::thread::sleep(Duration::from_millis(250));
    }

    /// Poll the screen until `pred` holds; panic after `limit` showing the last screen.
    pub fn wait_screen(&self, limit: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("last captured screen:\n{}", self.last.borrow());
        }
        let _ = self
            .cmd(&["kill-server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
