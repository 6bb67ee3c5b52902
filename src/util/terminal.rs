//! The local terminal for `cwo ssh`: its size, and raw mode restored on drop.

use std::io::IsTerminal;

/// (columns, rows) of the terminal on stdout, or 80x24.
pub(crate) fn size() -> (u32, u32) {
    // SAFETY: TIOCGWINSZ fills a winsize struct owned by this frame.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            return (ws.ws_col as u32, ws.ws_row as u32);
        }
    }
    (80, 24)
}

/// Puts stdin in raw mode while alive (nothing when stdin is not a terminal).
pub(crate) struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    pub(crate) fn enable() -> RawMode {
        if !std::io::stdin().is_terminal() {
            return RawMode { saved: None };
        }
        // SAFETY: tcgetattr/tcsetattr on fd 0 with termios structs owned by this frame.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return RawMode { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t);
            RawMode { saved: Some(saved) }
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the attributes read in `enable`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t);
            }
        }
    }
}
