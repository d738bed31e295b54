//! ANSI escape sequences in log lines, turned into styled spans.
//!
//! SGR (`ESC [ … m`) sets the style: bold, dim, italic, underline, blink (ignored), inverse,
//! hidden, strike-through, the 16 palette colours, the 256-colour palette and 24-bit colour,
//! in both the `;` and the `:` forms. Every other escape sequence (cursor movement, erase,
//! OSC titles and links, charset selection, …) and every other control character except tab
//! is dropped. A carriage return starts the line over, as on a terminal, unless nothing
//! follows it; erasing the line after it (`ESC [ K`, or `ESC [ 2 K` anywhere) empties the
//! line. Each line starts with the default style, so any page of a log renders the same
//! wherever it starts.

/// A colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Color {
    /// The terminal's default.
    #[default]
    Default,
    /// One of the 16 palette colours (0–7 normal, 8–15 bright), styled by the page's theme.
    Palette(u8),
    /// An exact colour (the 256-colour cube and grey ramp, or 24-bit).
    Rgb(u8, u8, u8),
}

/// The style of a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    /// Foreground.
    pub fg: Color,
    /// Background.
    pub bg: Color,
    /// Bold.
    pub bold: bool,
    /// Dim (faint).
    pub dim: bool,
    /// Italic.
    pub italic: bool,
    /// Underlined.
    pub underline: bool,
    /// Foreground and background swapped.
    pub inverse: bool,
    /// Invisible (concealed).
    pub hidden: bool,
    /// Struck through.
    pub strike: bool,
}

/// Text in one style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The text, escape sequences removed.
    pub text: String,
    /// Its style.
    pub style: Style,
}

impl Style {
    /// CSS classes for the attributes and the palette colours: `b` bold, `d` dim, `i` italic,
    /// `u` underline, `s` strike, `h` hidden, `fN`/`gN` palette foreground/background, `fr`
    /// and `gr` the default colours swapped by inverse.
    pub fn classes(&self) -> String {
        if *self == Style::default() {
            return String::new();
        }
        let mut c: Vec<String> = Vec::new();
        for (on, name) in [
            (self.bold, "b"),
            (self.dim, "d"),
            (self.italic, "i"),
            (self.underline, "u"),
            (self.strike, "s"),
            (self.hidden, "h"),
        ] {
            if on {
                c.push(name.to_string());
            }
        }
        let (fg, bg) = self.colors();
        match fg {
            Swapped::Color(Color::Palette(n)) => c.push(format!("f{n}")),
            Swapped::Other => c.push("fr".into()),
            _ => {}
        }
        match bg {
            Swapped::Color(Color::Palette(n)) => c.push(format!("g{n}")),
            Swapped::Other => c.push("gr".into()),
            _ => {}
        }
        c.join(" ")
    }

    /// Exact foreground and background colours as CSS (`#rrggbb`), for colours outside the
    /// palette.
    pub fn rgb(&self) -> (Option<String>, Option<String>) {
        let css = |s: Swapped| match s {
            Swapped::Color(Color::Rgb(r, g, b)) => Some(format!("#{r:02x}{g:02x}{b:02x}")),
            _ => None,
        };
        let (fg, bg) = self.colors();
        (css(fg), css(bg))
    }

    /// Foreground and background after inverse.
    fn colors(&self) -> (Swapped, Swapped) {
        if !self.inverse {
            return (Swapped::Color(self.fg), Swapped::Color(self.bg));
        }
        let side = |c: Color| match c {
            Color::Default => Swapped::Other,
            c => Swapped::Color(c),
        };
        (side(self.bg), side(self.fg))
    }
}

/// A colour after inverse: a colour, or the *other* default colour.
#[derive(Debug, Clone, Copy)]
enum Swapped {
    Color(Color),
    Other,
}

/// The 256-colour palette entry `n` (16–255) as RGB; 0–15 stay palette colours.
fn color256(n: u8) -> Color {
    match n {
        0..=15 => Color::Palette(n),
        16..=231 => {
            let n = n - 16;
            let level = |v: u8| if v == 0 { 0 } else { 55 + v * 40 };
            Color::Rgb(level(n / 36), level((n / 6) % 6), level(n % 6))
        }
        _ => {
            let v = 8 + (n - 232) * 10;
            Color::Rgb(v, v, v)
        }
    }
}

/// Applies one SGR sequence's parameters (the text between `ESC [` and `m`).
fn apply_sgr(style: &mut Style, params: &str) {
    if params.is_empty() {
        *style = Style::default();
        return;
    }
    let groups: Vec<&str> = params.split(';').collect();
    let num = |s: &str| s.parse::<u32>().ok();
    let mut i = 0;
    while i < groups.len() {
        let g = groups[i];
        i += 1;
        if g.contains(':') {
            // Colon form: `38:5:N`, `38:2:R:G:B` or `38:2:CS:R:G:B`, and `4:3` underline styles.
            let sub: Vec<Option<u32>> = g.split(':').map(num).collect();
            let color = match sub.get(1).copied().flatten() {
                Some(5) => sub
                    .get(2)
                    .copied()
                    .flatten()
                    .and_then(|n| u8::try_from(n).ok())
                    .map(color256),
                Some(2) => {
                    let rgb = if sub.len() >= 6 {
                        &sub[sub.len() - 3..]
                    } else {
                        &sub[2.min(sub.len())..]
                    };
                    rgb_of(rgb)
                }
                _ => None,
            };
            match sub.first().copied().flatten() {
                Some(38) => style.fg = color.unwrap_or(style.fg),
                Some(48) => style.bg = color.unwrap_or(style.bg),
                Some(4) => style.underline = sub.get(1).copied().flatten() != Some(0),
                _ => {}
            }
            continue;
        }
        let Some(code) = (if g.is_empty() { Some(0) } else { num(g) }) else {
            continue;
        };
        match code {
            0 => *style = Style::default(),
            1 => style.bold = true,
            2 => style.dim = true,
            3 => style.italic = true,
            4 | 21 => style.underline = true,
            7 => style.inverse = true,
            8 => style.hidden = true,
            9 => style.strike = true,
            22 => {
                style.bold = false;
                style.dim = false;
            }
            23 => style.italic = false,
            24 => style.underline = false,
            27 => style.inverse = false,
            28 => style.hidden = false,
            29 => style.strike = false,
            30..=37 => style.fg = Color::Palette((code - 30) as u8),
            39 => style.fg = Color::Default,
            40..=47 => style.bg = Color::Palette((code - 40) as u8),
            49 => style.bg = Color::Default,
            90..=97 => style.fg = Color::Palette((code - 90 + 8) as u8),
            100..=107 => style.bg = Color::Palette((code - 100 + 8) as u8),
            38 | 48 | 58 => {
                let color = match groups.get(i).and_then(|s| num(s)) {
                    Some(5) => {
                        let c = groups
                            .get(i + 1)
                            .and_then(|s| num(s))
                            .and_then(|n| u8::try_from(n).ok())
                            .map(color256);
                        i += 2;
                        c
                    }
                    Some(2) => {
                        let rgb: Vec<Option<u32>> = (1..4)
                            .map(|k| groups.get(i + k).and_then(|s| num(s)))
                            .collect();
                        i += 4;
                        rgb_of(&rgb)
                    }
                    _ => None,
                };
                if let Some(c) = color {
                    match code {
                        38 => style.fg = c,
                        48 => style.bg = c,
                        _ => {} // underline colour: not rendered
                    }
                }
            }
            _ => {} // blink, fonts, frames, …: not rendered
        }
    }
}

fn rgb_of(v: &[Option<u32>]) -> Option<Color> {
    match v {
        [Some(r), Some(g), Some(b)] => Some(Color::Rgb(
            u8::try_from(*r).ok()?,
            u8::try_from(*g).ok()?,
            u8::try_from(*b).ok()?,
        )),
        _ => None,
    }
}

/// Whether the byte at `i` starts something other than plain text: a C0 control (tab
/// aside), DEL, or a C1 control (U+0080–U+009F, `C2 80`–`C2 9F` in UTF-8).
fn special(b: &[u8], i: usize) -> bool {
    match b[i] {
        b'\t' => false,
        0x00..=0x1f | 0x7f => true,
        0xc2 => b.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)),
        _ => false,
    }
}

/// Collects spans; a carriage return makes the next text start the line over.
struct Spans {
    spans: Vec<Span>,
    cr: bool,
}

impl Spans {
    fn push(&mut self, style: Style, text: &str) {
        if text.is_empty() {
            return;
        }
        if self.cr {
            self.spans.clear();
            self.cr = false;
        }
        match self.spans.last_mut() {
            Some(last) if last.style == style => last.text.push_str(text),
            _ => self.spans.push(Span {
                text: text.to_string(),
                style,
            }),
        }
    }
}

/// Splits a line into styled spans (see the module docs). Invalid UTF-8 shows as U+FFFD.
pub fn parse(line: &[u8]) -> Vec<Span> {
    let text = String::from_utf8_lossy(line);
    let b = text.as_bytes();
    let mut out = Spans {
        spans: Vec::new(),
        cr: false,
    };
    let mut style = Style::default();
    let mut i = 0;
    while i < b.len() {
        // A run of plain text.
        let start = i;
        while i < b.len() && !special(b, i) {
            i += 1;
        }
        // Runs end only before ASCII bytes or `C2`, so they are whole characters.
        out.push(style, &text[start..i]);
        if i >= b.len() {
            break;
        }
        // ESC, or a C1 control (two bytes).
        let (kind, next) = match b[i] {
            0x1b => (b.get(i + 1).copied(), i + 2),
            0xc2 => match b[i + 1] {
                0x9b => (Some(b'['), i + 2),
                0x9d => (Some(b']'), i + 2),
                _ => (None, i + 2), // other C1 controls are dropped
            },
            b'\r' => {
                out.cr = true;
                (None, i + 1)
            }
            _ => (None, i + 1), // other C0 controls and DEL are dropped
        };
        i = next;
        match kind {
            Some(b'[') => {
                // CSI: parameters 0x30–0x3F, intermediates 0x20–0x2F, final 0x40–0x7E.
                let params = i;
                let mut plain = true;
                while i < b.len() && matches!(b[i], 0x20..=0x3f) {
                    plain &= b[i].is_ascii_digit() || b[i] == b';' || b[i] == b':';
                    i += 1;
                }
                if i < b.len() && matches!(b[i], 0x40..=0x7e) {
                    if b[i] == b'm' && plain {
                        apply_sgr(&mut style, &text[params..i]);
                    }
                    // Erase in line: the whole line (`2K`), or all of it from the start of
                    // the line after a carriage return (`K`, `0K`), as GitLab's section
                    // lines do (`section_end:…\r ESC[0K`).
                    let erase = &text[params..i];
                    if b[i] == b'K' && (erase == "2" || (out.cr && matches!(erase, "" | "0"))) {
                        out.spans.clear();
                    }
                    i += 1;
                }
                // Otherwise malformed: what was read is dropped.
            }
            Some(b']' | b'P' | b'X' | b'^' | b'_') => {
                // String sequences end with BEL or ST (`ESC \` or U+009C).
                while i < b.len() {
                    match b[i] {
                        0x07 => {
                            i += 1;
                            break;
                        }
                        0x1b => {
                            i += if b.get(i + 1) == Some(&b'\\') { 2 } else { 1 };
                            break;
                        }
                        0xc2 if b.get(i + 1) == Some(&0x9c) => {
                            i += 2;
                            break;
                        }
                        _ => i += 1,
                    }
                }
            }
            Some(0x20..=0x2f) => {
                // nF sequences (charset selection, …): intermediates, then a final byte.
                while i < b.len() && matches!(b[i], 0x20..=0x2f) {
                    i += 1;
                }
                if i < b.len() && b[i].is_ascii() {
                    i += 1;
                }
            }
            // Two-character sequences: the second byte goes too (if it is ASCII).
            Some(k) if b[i - 2] == 0x1b && !k.is_ascii() => i -= 1,
            _ => {}
        }
        // Never stop inside a character.
        while i < b.len() && !text.is_char_boundary(i) {
            i += 1;
        }
    }
    out.spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(line: &[u8]) -> Vec<(String, String, Option<String>, Option<String>)> {
        parse(line)
            .into_iter()
            .map(|s| {
                let (fg, bg) = s.style.rgb();
                (s.text, s.style.classes(), fg, bg)
            })
            .collect()
    }

    fn plain(text: &str, classes: &str) -> (String, String, Option<String>, Option<String>) {
        (text.into(), classes.into(), None, None)
    }

    #[test]
    fn palette_and_attributes() {
        assert_eq!(
            show(b"\x1b[1;31merror\x1b[0m: x \x1b[4;92mok\x1b[24m!\x1b[m."),
            [
                plain("error", "b f1"),
                plain(": x ", ""),
                plain("ok", "u f10"),
                plain("!", "f10"),
                plain(".", ""),
            ]
        );
        assert_eq!(
            show(b"\x1b[3;9;2;44mz\x1b[22;23;29;49mw"),
            [plain("z", "d i s g4"), plain("w", "")]
        );
        assert_eq!(
            show(b"\x1b[7mi\x1b[31mj"),
            [plain("i", "fr gr"), plain("j", "fr g1")]
        );
    }

    #[test]
    fn extended_colours() {
        assert_eq!(
            show(b"\x1b[38;5;196ma\x1b[48;5;244mb\x1b[38;5;3mc"),
            [
                ("a".into(), "".into(), Some("#ff0000".into()), None),
                (
                    "b".into(),
                    "".into(),
                    Some("#ff0000".into()),
                    Some("#808080".into())
                ),
                ("c".into(), "f3".into(), None, Some("#808080".into())),
            ]
        );
        assert_eq!(
            show(b"\x1b[38;2;1;2;3mx\x1b[38:2::10:20:30my\x1b[38:5:21mz\x1b[48:2:4:5:6mw"),
            [
                ("x".into(), "".into(), Some("#010203".into()), None),
                ("y".into(), "".into(), Some("#0a141e".into()), None),
                ("z".into(), "".into(), Some("#0000ff".into()), None),
                (
                    "w".into(),
                    "".into(),
                    Some("#0000ff".into()),
                    Some("#040506".into())
                ),
            ]
        );
        // Out-of-range and truncated colours change nothing.
        assert_eq!(show(b"\x1b[38;5;300ma\x1b[38;2;1mb"), [plain("ab", "")]);
    }

    #[test]
    fn other_sequences_and_controls_are_dropped() {
        assert_eq!(
            show(b"\x1b[2K\x1b[1Ga\x1b]0;title\x07b\x1b]8;;http://x\x1b\\c\x1b(Bd\x1b=e\x00\x08f\tg\x1b[?25lh\x1b["),
            [plain("abcdef\tgh", "")]
        );
    }

    #[test]
    fn carriage_returns_start_over() {
        assert_eq!(show(b"\x1b[32m10%\r20%\r100%"), [plain("100%", "f2")]);
        assert_eq!(show(b"done\r"), [plain("done", "")]);
        assert_eq!(show(b"section_end:1:x\r\x1b[0K"), []);
        assert_eq!(show(b"keep\x1b[K"), [plain("keep", "")]);
        assert_eq!(show(b"gone\x1b[2Knew"), [plain("new", "")]);
        assert_eq!(show(b"\xff<b>&"), [plain("\u{fffd}<b>&", "")]);
    }

    #[test]
    fn c1_controls_and_odd_bytes() {
        assert_eq!(
            show("\u{9b}31mred\u{9d}0;t\u{9c}x\u{85}y\x1b\u{e9}z".as_bytes()),
            [plain("redxy\u{e9}z", "f1")]
        );
        // Nothing panics, whatever the bytes.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            let line: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    [
                        0x1b, b'[', b';', b'm', b'3', b'8', b'5', b'2', 0xc2, 0x9b, 0xe9, b'\r',
                        b'a',
                    ][(x % 13) as usize]
                })
                .collect();
            let _ = parse(&line);
        }
    }
}
