//! The one key table. The footer, the `?` overlay and the dispatcher are all generated from
//! `BINDINGS`, so what the dashboard says a key does is what it does.
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::dashboard::state::{Popup, Screen, State};

/// Which set of bindings is live. Derived from the state (`mode`), never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Tables and screens.
    Normal,
    /// Typing into the prompt pane.
    Prompt,
    /// Typing a `/` filter or a `:` command.
    Input,
    /// A confirm popup is open.
    Confirm,
    /// The spawn dialog is open.
    Dialog,
    /// The `?` overlay is open.
    Help,
}

impl Mode {
    /// The heading of the mode's section in the help overlay.
    pub fn title(self) -> &'static str {
        match self {
            Mode::Normal => "Screens",
            Mode::Prompt => "Prompt pane",
            Mode::Input => "Filter / command line",
            Mode::Confirm => "Confirm popup",
            Mode::Dialog => "Spawn dialog",
            Mode::Help => "Help",
        }
    }
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmd {
    /// Selection up.
    Up,
    /// Selection down.
    Down,
    /// Open the selected node or worker.
    Open,
    /// Clear the filter, else go back a screen.
    Back,
    /// Prompt pane ⇄ table, or screen ⇄ Events.
    SwitchPane,
    /// Open the spawn dialog.
    Spawn,
    /// Ask to kill the selected worker.
    Kill,
    /// Ask to restart the selected worker.
    Restart,
    /// Ask to kill every worker of the current node.
    UnloadAll,
    /// The gateway's Requests screen (`--serve`).
    Requests,
    /// Open the prompt pane.
    Prompt,
    /// Start typing a `/` filter.
    Filter,
    /// Start typing a `:` command.
    CommandLine,
    /// Open the help overlay.
    Help,
    /// Leave the dashboard.
    Quit,
    /// Send the typed prompt.
    PromptSend,
    /// Stop the generation, else close the pane.
    PromptCancel,
    /// Start a new conversation in the pane (the history is dropped, the system turn kept).
    PromptNew,
    /// Delete the last typed character.
    DeleteChar,
    /// Apply the filter or run the command.
    InputSubmit,
    /// Stop typing (a filter is cleared).
    InputCancel,
    /// Do what the popup asks about.
    ConfirmYes,
    /// Do not.
    ConfirmNo,
    /// Next dialog field.
    DialogNext,
    /// Previous dialog field.
    DialogPrev,
    /// Previous value of the field.
    DialogLess,
    /// Next value of the field.
    DialogMore,
    /// Spawn as the dialog says.
    DialogSubmit,
    /// Close the dialog.
    DialogCancel,
    /// Close the help overlay.
    HelpClose,
}

/// One key: a code and the modifiers that must be held (Shift is ignored for characters, since
/// terminals disagree on reporting it for `?` and `:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The key.
    pub code: KeyCode,
    /// Modifiers that must be held (exactly these).
    pub mods: KeyModifiers,
}

const fn k(code: KeyCode) -> Key {
    Key {
        code,
        mods: KeyModifiers::NONE,
    }
}

const fn ch(c: char) -> Key {
    k(KeyCode::Char(c))
}

const fn ctrl(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        mods: KeyModifiers::CONTROL,
    }
}

impl Key {
    /// Whether a key event is this key.
    pub fn matches(&self, ev: &KeyEvent) -> bool {
        let mut mods = ev.modifiers;
        if matches!(ev.code, KeyCode::Char(_)) {
            mods.remove(KeyModifiers::SHIFT);
        }
        self.code == ev.code && self.mods == mods
    }

    /// The event this key produces (for tests and the help text).
    pub fn event(&self) -> KeyEvent {
        KeyEvent::new(self.code, self.mods)
    }

    /// How the footer and help write it: `⏎`, `esc`, `^C`.
    pub fn label(&self) -> String {
        let base = match self.code {
            KeyCode::Up => "↑".to_string(),
            KeyCode::Down => "↓".to_string(),
            KeyCode::Left => "←".to_string(),
            KeyCode::Right => "→".to_string(),
            KeyCode::Enter => "⏎".to_string(),
            KeyCode::Esc => "esc".to_string(),
            KeyCode::Tab => "tab".to_string(),
            KeyCode::BackTab => "S-tab".to_string(),
            KeyCode::Backspace => "bksp".to_string(),
            KeyCode::Char(c) => c.to_string(),
            other => format!("{other:?}").to_lowercase(),
        };
        if self.mods.contains(KeyModifiers::CONTROL) {
            format!("^{}", base.to_uppercase())
        } else {
            base
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    /// Where it is live.
    pub mode: Mode,
    /// What it does.
    pub cmd: Cmd,
    /// The keys, the first one shown in the footer.
    pub keys: &'static [Key],
    /// One word for the footer.
    pub short: &'static str,
    /// What the key does, for the `?` overlay.
    pub help: &'static str,
    /// Shown in the footer (movement keys are too obvious to spend the room on).
    pub footer: bool,
}

const fn b(
    mode: Mode,
    cmd: Cmd,
    keys: &'static [Key],
    short: &'static str,
    help: &'static str,
) -> Binding {
    Binding {
        mode,
        cmd,
        keys,
        short,
        help,
        footer: true,
    }
}

const fn quiet(
    mode: Mode,
    cmd: Cmd,
    keys: &'static [Key],
    short: &'static str,
    help: &'static str,
) -> Binding {
    Binding {
        mode,
        cmd,
        keys,
        short,
        help,
        footer: false,
    }
}

use Cmd::*;
use Mode::{
    Confirm as MConfirm, Dialog as MDialog, Help as MHelp, Input as MInput, Normal as MNormal,
    Prompt as MPrompt,
};

/// Every binding, in the order the footer offers them.
pub const BINDINGS: &[Binding] = &[
    quiet(MNormal, Up, &[k(KeyCode::Up), ch('k')], "up", "move up"),
    quiet(
        MNormal,
        Down,
        &[k(KeyCode::Down), ch('j')],
        "down",
        "move down",
    ),
    b(
        MNormal,
        Open,
        &[k(KeyCode::Enter)],
        "open",
        "open node / worker",
    ),
    b(
        MNormal,
        Back,
        &[k(KeyCode::Esc)],
        "back",
        "back / clear the filter",
    ),
    b(
        MNormal,
        Spawn,
        &[ch('s')],
        "spawn",
        "spawn workers on this node",
    ),
    b(
        MNormal,
        Kill,
        &[ch('x')],
        "kill",
        "kill worker (asks first)",
    ),
    b(
        MNormal,
        Restart,
        &[ch('r')],
        "restart",
        "restart worker (asks first)",
    ),
    quiet(
        MNormal,
        UnloadAll,
        &[ch('U')],
        "unload all",
        "kill all workers (asks first)",
    ),
    quiet(
        MNormal,
        Requests,
        &[ch('R')],
        "requests",
        "API requests (--serve)",
    ),
    b(
        MNormal,
        Prompt,
        &[ch('p')],
        "prompt",
        "prompt worker or model",
    ),
    b(MNormal, Filter, &[ch('/')], "filter", "filter this table"),
    b(
        MNormal,
        CommandLine,
        &[ch(':')],
        "cmd",
        ":nodes :events :node N :q",
    ),
    b(
        MNormal,
        SwitchPane,
        &[k(KeyCode::Tab)],
        "pane",
        "prompt ⇄ table / events",
    ),
    b(MNormal, Quit, &[ch('q'), ctrl('c')], "quit", "quit"),
    b(MNormal, Help, &[ch('?')], "help", "show every key"),
    b(
        MPrompt,
        PromptSend,
        &[k(KeyCode::Enter)],
        "send",
        "send, /system T: system turn",
    ),
    b(
        MPrompt,
        PromptNew,
        &[ctrl('n')],
        "new chat",
        "new conversation",
    ),
    b(
        MPrompt,
        PromptCancel,
        &[k(KeyCode::Esc), ctrl('c')],
        "cancel",
        "stop, or close the pane",
    ),
    b(
        MPrompt,
        SwitchPane,
        &[k(KeyCode::Tab)],
        "table",
        "focus the table",
    ),
    quiet(
        MPrompt,
        DeleteChar,
        &[k(KeyCode::Backspace)],
        "delete",
        "delete a character",
    ),
    b(
        MInput,
        InputSubmit,
        &[k(KeyCode::Enter)],
        "apply",
        "apply filter / run command",
    ),
    b(
        MInput,
        InputCancel,
        &[k(KeyCode::Esc)],
        "cancel",
        "cancel (clears filter)",
    ),
    quiet(
        MInput,
        DeleteChar,
        &[k(KeyCode::Backspace)],
        "delete",
        "delete a character",
    ),
    b(MConfirm, ConfirmYes, &[ch('y')], "yes", "do it"),
    b(
        MConfirm,
        ConfirmNo,
        &[ch('n'), k(KeyCode::Esc)],
        "no",
        "cancel (any key does)",
    ),
    b(
        MDialog,
        DialogNext,
        &[k(KeyCode::Tab), k(KeyCode::Down)],
        "next",
        "next field",
    ),
    b(
        MDialog,
        DialogPrev,
        &[k(KeyCode::BackTab), k(KeyCode::Up)],
        "prev",
        "previous field",
    ),
    b(
        MDialog,
        DialogLess,
        &[k(KeyCode::Left), ch('-')],
        "less",
        "previous value",
    ),
    b(
        MDialog,
        DialogMore,
        &[k(KeyCode::Right), ch('+')],
        "more",
        "next value",
    ),
    b(
        MDialog,
        DialogSubmit,
        &[k(KeyCode::Enter)],
        "spawn",
        "spawn",
    ),
    b(
        MDialog,
        DialogCancel,
        &[k(KeyCode::Esc)],
        "cancel",
        "close without spawning",
    ),
    b(
        MHelp,
        HelpClose,
        &[k(KeyCode::Esc), ch('?'), ch('q')],
        "close",
        "close this help",
    ),
];

/// Modes in the order the help overlay lists them.
pub const MODES: &[Mode] = &[
    Mode::Normal,
    Mode::Prompt,
    Mode::Input,
    Mode::Confirm,
    Mode::Dialog,
    Mode::Help,
];

/// The live mode: popups first, then text inputs, then the focused prompt pane.
pub fn mode(state: &State) -> Mode {
    match &state.popup {
        Some(Popup::Help) => return Mode::Help,
        Some(Popup::Confirm(_)) => return Mode::Confirm,
        Some(Popup::Spawn(_)) => return Mode::Dialog,
        None => {}
    }
    if state.input.is_some() {
        return Mode::Input;
    }
    if state.prompt.as_ref().is_some_and(|p| p.focused) {
        return Mode::Prompt;
    }
    Mode::Normal
}

/// The command `ev` means in `mode`, if any.
pub fn lookup(mode: Mode, ev: &KeyEvent) -> Option<Cmd> {
    BINDINGS
        .iter()
        .find(|b| b.mode == mode && b.keys.iter().any(|k| k.matches(ev)))
        .map(|b| b.cmd)
}

/// Whether `cmd` can do something on the current screen (drives the footer; the dispatcher
/// explains instead when it cannot).
pub fn applies(state: &State, cmd: Cmd) -> bool {
    let on_node_screens = matches!(
        state.screen,
        Screen::Nodes | Screen::Node(_) | Screen::Worker(..)
    );
    match cmd {
        Open => match &state.screen {
            Screen::Nodes => !state.visible_nodes().is_empty(),
            Screen::Node(n) => !state.visible_workers(*n).is_empty(),
            _ => false,
        },
        Back => state.screen != Screen::Nodes || !state.filter.is_empty(),
        Kill | Restart => state.selected_worker().is_some(),
        UnloadAll => {
            on_node_screens
                && state
                    .nodes
                    .get(state.current_node())
                    .is_some_and(|n| !n.workers.is_empty())
        }
        Spawn | Prompt => on_node_screens && !state.nodes.is_empty(),
        _ => true,
    }
}

/// Footer entries for the live mode: (keys, word).
pub fn footer(state: &State) -> Vec<(String, &'static str)> {
    let m = mode(state);
    BINDINGS
        .iter()
        .filter(|b| b.mode == m && b.footer && (m != Mode::Normal || applies(state, b.cmd)))
        .map(|b| (b.keys[0].label(), b.short))
        .collect()
}

/// All keys of a binding, for the help overlay: `↑ k`.
pub fn keys_label(binding: &Binding) -> String {
    binding
        .keys
        .iter()
        .map(Key::label)
        .collect::<Vec<_>>()
        .join(" ")
}
