//! A strict, allocation-free check of an encoded `logpb.LogEntry`.
//!
//! The collector stores entries as they arrive but must never store one that the read path
//! cannot decode, and the spool's uploader counts the payload of bundles it reads back.
//! Decoding every entry with prost to find out costs an allocation per text line (each
//! delimiter is a `String`), which dominated the collector's CPU time. This walker reads the
//! wire format in place instead.
//!
//! It is at least as strict as prost: whatever it accepts, prost decodes, to the same stream
//! index and payload (`proto/tests/wire_props.rs` checks this). It is stricter in two ways
//! no LogDog encoder runs into: a content field (text, binary, datagram) or a field inside one
//! may appear only once, and deprecated groups are refused.

/// A fault found in an entry's encoding.
pub type Fault = &'static str;

/// What the walker learnt of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryFacts {
    /// `stream_index` (0 when absent, as prost reads it).
    pub stream_index: u64,
    /// `sequence` (0 when absent).
    pub sequence: u64,
    /// The content, if any.
    pub content: Option<ContentFacts>,
}

/// The kind and size of an entry's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentFacts {
    /// Field number of the content: 10 text, 11 binary, 12 datagram.
    pub field: u32,
    /// Payload bytes (text: every line's value and delimiter).
    pub payload: u64,
    /// Text: lines; binary and datagram: 0.
    pub parts: u64,
    /// How far the entry moves LogDog's `sequence` on: text, its complete lines (those with a
    /// delimiter); binary, its bytes; datagram, 1 for a whole datagram or the last fragment of
    /// one, 0 for any other fragment. The next entry's `sequence` is this one's plus `span`.
    pub span: u64,
}

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.buf.is_empty()
    }

    /// A varint with prost's rules: at most 10 bytes, the 10th at most 1.
    fn varint(&mut self) -> Result<u64, Fault> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.buf.split_first() else {
                return Err("truncated varint");
            };
            self.buf = rest;
            if i == 9 && b > 1 {
                return Err("invalid varint");
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err("invalid varint")
    }

    /// A field key: (field number, wire type).
    fn key(&mut self) -> Result<(u32, u8), Fault> {
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| "invalid key")?;
        let wire = (key & 7) as u8;
        if wire > 5 {
            return Err("invalid wire type");
        }
        let field = key >> 3;
        if field == 0 {
            return Err("invalid field number 0");
        }
        Ok((field, wire))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Fault> {
        let n = usize::try_from(n).map_err(|_| "length out of range")?;
        if n > self.buf.len() {
            return Err("truncated field");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn len_delimited(&mut self) -> Result<&'a [u8], Fault> {
        let n = self.varint()?;
        self.take(n)
    }

    /// Skips a field of an unknown number.
    fn skip(&mut self, wire: u8) -> Result<(), Fault> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            FIXED32 => self.take(4).map(drop),
            LEN => self.len_delimited().map(drop),
            _ => Err("groups are not accepted"),
        }
    }
}

fn expect(wire: u8, want: u8) -> Result<(), Fault> {
    if wire == want {
        Ok(())
    } else {
        Err("wrong wire type for a known field")
    }
}

/// Checks a `google.protobuf.Duration` (fields 1 and 2, varints).
fn duration(buf: &[u8]) -> Result<(), Fault> {
    let mut r = Reader { buf };
    while !r.done() {
        match r.key()? {
            (1 | 2, w) => {
                expect(w, VARINT)?;
                r.varint()?;
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok(())
}

/// A text line's payload (its value's and its UTF-8 delimiter's lengths) and whether it is
/// complete (has a delimiter).
fn line(buf: &[u8]) -> Result<(u64, bool), Fault> {
    let mut r = Reader { buf };
    let (mut value, mut delim) = (None, None);
    while !r.done() {
        match r.key()? {
            (1, w) => {
                expect(w, LEN)?;
                if value.replace(r.len_delimited()?.len()).is_some() {
                    return Err("a line with two values");
                }
            }
            (2, w) => {
                expect(w, LEN)?;
                let d = r.len_delimited()?;
                std::str::from_utf8(d).map_err(|_| "a line delimiter that is not UTF-8")?;
                if delim.replace(d.len()).is_some() {
                    return Err("a line with two delimiters");
                }
            }
            (_, w) => r.skip(w)?,
        }
    }
    let delim = delim.unwrap_or(0);
    Ok(((value.unwrap_or(0) + delim) as u64, delim > 0))
}

fn text(buf: &[u8]) -> Result<ContentFacts, Fault> {
    let mut r = Reader { buf };
    let (mut payload, mut lines, mut complete) = (0u64, 0u64, 0u64);
    while !r.done() {
        match r.key()? {
            (1, w) => {
                expect(w, LEN)?;
                let (n, whole) = line(r.len_delimited()?)?;
                payload += n;
                lines += 1;
                complete += u64::from(whole);
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok(ContentFacts {
        field: 10,
        payload,
        parts: lines,
        span: complete,
    })
}

/// Binary (data: field 2) or datagram (data: field 1, partial: field 2).
fn data(buf: &[u8], field: u32) -> Result<ContentFacts, Fault> {
    let data_field = if field == 11 { 2 } else { 1 };
    let mut r = Reader { buf };
    let mut data = None;
    let mut partial = false;
    let mut last = false;
    while !r.done() {
        match r.key()? {
            (f, w) if f == data_field => {
                expect(w, LEN)?;
                if data.replace(r.len_delimited()?.len()).is_some() {
                    return Err("content with two data fields");
                }
            }
            (2, w) if field == 12 => {
                expect(w, LEN)?;
                if partial {
                    return Err("a datagram with two partial fields");
                }
                partial = true;
                last = partial_fields(r.len_delimited()?)?;
            }
            (_, w) => r.skip(w)?,
        }
    }
    let payload = data.unwrap_or(0) as u64;
    let span = if field == 11 {
        payload
    } else {
        u64::from(!partial || last)
    };
    Ok(ContentFacts {
        field,
        payload,
        parts: 0,
        span,
    })
}

/// `Datagram.Partial`: index, size, last (varints). Returns `last` (as prost reads a bool:
/// any non-zero value, the last occurrence winning).
fn partial_fields(buf: &[u8]) -> Result<bool, Fault> {
    let mut r = Reader { buf };
    let mut last = false;
    while !r.done() {
        match r.key()? {
            (f @ 1..=3, w) => {
                expect(w, VARINT)?;
                let v = r.varint()?;
                if f == 3 {
                    last = v != 0;
                }
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok(last)
}

/// Checks an encoded `logpb.LogEntry`.
///
/// # Errors
/// Anything prost would refuse, and the few things this walker refuses besides (see the
/// module docs).
pub fn log_entry(buf: &[u8]) -> Result<EntryFacts, Fault> {
    let mut r = Reader { buf };
    let mut facts = EntryFacts {
        stream_index: 0,
        sequence: 0,
        content: None,
    };
    while !r.done() {
        match r.key()? {
            (1, w) => {
                expect(w, LEN)?;
                duration(r.len_delimited()?)?;
            }
            (2, w) => {
                expect(w, VARINT)?;
                r.varint()?;
            }
            (4, w) => {
                expect(w, VARINT)?;
                facts.sequence = r.varint()?;
            }
            (3, w) => {
                expect(w, VARINT)?;
                facts.stream_index = r.varint()?;
            }
            (f @ 10..=12, w) => {
                expect(w, LEN)?;
                if facts.content.is_some() {
                    return Err("an entry with two contents");
                }
                let body = r.len_delimited()?;
                facts.content = Some(if f == 10 { text(body)? } else { data(body, f)? });
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok(facts)
}
