//! Reading a child's event stream as it arrives in pieces of any size:
//! complete `data:` payloads out, one per event (lines of one event joined
//! by `\n`, as the SSE format says); comments and other fields ignored.
//! A line longer than [`MAX_LINE`] is dropped, so a hostile child cannot
//! grow our memory without bound.

use serde_json::Value;

/// Longest line kept.
const MAX_LINE: usize = 8 << 20;

/// What one event of a child's chat-completion stream is to a translator.
pub enum ChildEvent {
    /// One chunk of the child's stream.
    Chunk(Value),
    /// The child's error event (before `[DONE]`).
    Error(String),
    /// `[DONE]`, or the end of the child's body.
    End,
}

/// The event a child's data payload stands for (None: nothing to do).
pub fn child_event(data: &[u8]) -> Option<ChildEvent> {
    let data = data.trim_ascii();
    if data == b"[DONE]" {
        return Some(ChildEvent::End);
    }
    let v: Value = serde_json::from_slice(data).ok()?;
    if let Some(e) = v.get("error") {
        let msg = e
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| e.as_str().map(str::to_string).unwrap_or(e.to_string()));
        return Some(ChildEvent::Error(msg));
    }
    Some(ChildEvent::Chunk(v))
}

/// A stream translator: what becomes of each of the child's events.
pub trait Translate {
    /// The one transition function: `ev` in, the client's bytes to `out`.
    fn on(&mut self, ev: ChildEvent, out: &mut Vec<u8>);
}

#[derive(Debug, Default)]
pub struct Events {
    /// The unfinished line.
    line: Vec<u8>,
    /// The data lines of the unfinished event.
    data: Vec<u8>,
    has_data: bool,
    /// The current line grew too long: skip to its end.
    skipping: bool,
}

impl Events {
    /// Bytes of the child's stream in (any split): each event they
    /// complete goes through `to`.
    pub fn feed(&mut self, piece: &[u8], to: &mut dyn Translate, out: &mut Vec<u8>) {
        for ev in self.events(piece) {
            to.on(ev, out);
        }
    }

    /// The child's stream ended: what is left, then `End`, through `to`.
    pub fn end(&mut self, to: &mut dyn Translate, out: &mut Vec<u8>) {
        for ev in self.last_events() {
            to.on(ev, out);
        }
    }

    /// Feed `piece`; the child events it completes.
    pub fn events(&mut self, piece: &[u8]) -> Vec<ChildEvent> {
        let mut out = Vec::new();
        self.push(piece, &mut |d| out.extend(child_event(d)));
        out
    }

    /// The child events of what is left at the body's end, then `End`.
    pub fn last_events(&mut self) -> Vec<ChildEvent> {
        let mut out = Vec::new();
        self.finish(&mut |d| out.extend(child_event(d)));
        out.push(ChildEvent::End);
        out
    }

    /// Feed `piece`; `each` gets every event's data completed by it.
    pub fn push(&mut self, mut piece: &[u8], each: &mut dyn FnMut(&[u8])) {
        while let Some(nl) = piece.iter().position(|&b| b == b'\n') {
            if self.skipping {
                self.skipping = false;
                self.line.clear();
            } else if self.line.is_empty() {
                self.line(&piece[..nl], each);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&piece[..nl]);
                self.line(&line, each);
            }
            piece = &piece[nl + 1..];
        }
        if self.skipping {
            return;
        }
        if self.line.len() + piece.len() > MAX_LINE {
            self.line = Vec::new();
            self.skipping = true;
        } else {
            self.line.extend_from_slice(piece);
        }
    }

    /// The stream ended: an event without its closing blank line counts.
    pub fn finish(&mut self, each: &mut dyn FnMut(&[u8])) {
        let rest = std::mem::take(&mut self.line);
        if !rest.is_empty() && !self.skipping {
            self.line(&rest, each);
        }
        self.line(b"", each);
    }

    fn line(&mut self, line: &[u8], each: &mut dyn FnMut(&[u8])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                let data = std::mem::take(&mut self.data);
                self.has_data = false;
                each(&data);
            }
            return;
        }
        let Some(value) = line.strip_prefix(b"data:") else {
            return;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if self.has_data {
            self.data.push(b'\n');
        }
        self.data.extend_from_slice(value);
        self.has_data = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(pieces: &[&[u8]]) -> Vec<String> {
        let mut e = Events::default();
        let mut out = Vec::new();
        for p in pieces {
            e.push(p, &mut |d| {
                out.push(String::from_utf8_lossy(d).into_owned())
            });
        }
        e.finish(&mut |d| out.push(String::from_utf8_lossy(d).into_owned()));
        out
    }

    #[test]
    fn events_across_pieces() {
        assert_eq!(
            all(&[b"data: {\"a\"", b":1}\n\n: comment\n\ndata: [DONE]\r\n\r\n"]),
            vec!["{\"a\":1}", "[DONE]"]
        );
        assert_eq!(all(&[b"data: x\ndata: y\n\ndata: z"]), vec!["x\ny", "z"]);
        assert_eq!(all(&[b"event: e\nid: 1\n\n"]), Vec::<String>::new());
    }
}
