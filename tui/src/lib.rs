//! rbee-tui
