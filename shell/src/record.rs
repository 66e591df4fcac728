//! `ferry --record DIR`: each session's traffic after login, one file per
//! session, in the line-oriented format described in `scenarios/recorded/README.md`.
//!
//! A [`Recorder`] lives in the session's hooks and writes through a buffered
//! writer on the session's own task. Sessions without recording hold `None`
//! and pay one branch per read. The first write error disables recording for
//! that session with one warning.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use ferry_core::labels::LoginName;
use ferry_core::packets::flags::caps::CLIENT_COMPRESS;
use ferry_core::session::LoginDetails;
use ferry_core::Timestamp;
use tracing::{info, warn};

/// The first line of every recording.
pub const MAGIC: &str = "# ferry recording v1";

/// Buffered bytes before a write reaches the file.
const BUFFER: usize = 64 * 1024;

/// One session's recording.
pub struct Recorder {
    dir: PathBuf,
    conn_id: u32,
    start: Timestamp,
    out: Option<BufWriter<File>>,
    failed: bool,
    line: String,
}

impl Recorder {
    /// A recorder for session `conn_id` that started at `start`; the file is
    /// created at login.
    pub fn new(dir: &Path, conn_id: u32, start: Timestamp) -> Self {
        Recorder {
            dir: dir.to_path_buf(),
            conn_id,
            start,
            out: None,
            failed: false,
            line: String::new(),
        }
    }

    /// The session logged in: creates the file and writes the header.
    pub fn logged_in(&mut self, now: Timestamp, login: &LoginName, client: &LoginDetails) {
        if self.out.is_some() || self.failed {
            return;
        }
        if client.capabilities & CLIENT_COMPRESS != 0 {
            // The bytes read are compressed frames, which replay does not speak.
            info!(conn_id = self.conn_id, "compressed session: not recorded");
            self.failed = true;
            return;
        }
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = self
            .dir
            .join(format!("{unix_ms}-{}.ferryrec", self.conn_id));
        let mut h = String::new();
        let _ = writeln!(h, "{MAGIC}");
        let _ = writeln!(h, "conn_id {}", self.conn_id);
        let _ = writeln!(h, "user {}", escape(&login.user));
        let _ = writeln!(h, "client_user {}", escape(&client.user));
        if let Some(t) = &login.tenant {
            let _ = writeln!(h, "tenant {}", escape(t));
        }
        for (k, v) in &login.labels.0 {
            let _ = writeln!(h, "label {}\t{}", escape(k), escape(v));
        }
        if let Some(db) = &client.database {
            let _ = writeln!(h, "database {}", escape(db));
        }
        let _ = writeln!(h, "capabilities 0x{:08x}", client.capabilities);
        let _ = writeln!(h, "collation {}", client.collation);
        for (k, v) in &client.attributes {
            let _ = writeln!(h, "attr {}\t{}", escape(k), escape(v));
        }
        let _ = writeln!(h, "login_us {}", now.0.saturating_sub(self.start.0));
        let _ = writeln!(h, "---");
        let result = File::create(&path).and_then(|f| {
            let mut w = BufWriter::with_capacity(BUFFER, f);
            w.write_all(h.as_bytes())?;
            Ok(w)
        });
        match result {
            Ok(w) => self.out = Some(w),
            Err(e) => self.fail(&e),
        }
    }

    /// Bytes read from the client (`from_client`) or the backend.
    pub fn data(&mut self, now: Timestamp, from_client: bool, bytes: &[u8]) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        self.line.clear();
        let dir = if from_client { 'C' } else { 'B' };
        let _ = write!(self.line, "{} {dir} ", now.0.saturating_sub(self.start.0));
        match from_client
            .then(|| without_change_user_scramble(bytes))
            .flatten()
        {
            Some(redacted) => hex_into(&mut self.line, &redacted),
            None => hex_into(&mut self.line, bytes),
        }
        self.line.push('\n');
        if let Err(e) = out.write_all(self.line.as_bytes()) {
            self.fail(&e);
        }
    }

    fn fail(&mut self, e: &std::io::Error) {
        self.out = None;
        if !self.failed {
            self.failed = true;
            warn!(conn_id = self.conn_id, dir = %self.dir.display(), error = %e, "recording failed; this session is no longer recorded");
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut out) = self.out.take() {
            if let Err(e) = out.flush() {
                self.fail(&e);
            }
        }
    }
}

/// A COM_CHANGE_USER packet with its auth response zeroed (a scramble of
/// the password must not reach a recording); None for anything else.
pub fn without_change_user_scramble(bytes: &[u8]) -> Option<Vec<u8>> {
    const COM_CHANGE_USER: u8 = 0x11;
    if bytes.len() < 6 || bytes[3] != 0 || bytes[4] != COM_CHANGE_USER {
        return None;
    }
    let user_end = 5 + bytes[5..].iter().position(|b| *b == 0)?;
    let len_at = user_end + 1;
    let len = usize::from(*bytes.get(len_at)?);
    let mut redacted = bytes.to_vec();
    let end = (len_at + 1 + len).min(redacted.len());
    redacted[len_at + 1..end].fill(0);
    Some(redacted)
}

fn hex_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
}

/// Escapes `\`, tab, newline and carriage return in a header value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// Undoes [`escape`].
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(c) => out.push(c),
            None => out.push('\\'),
        }
    }
    out
}

/// Who read a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Read from the client.
    Client,
    /// Read from the backend.
    Backend,
}

/// One chunk of a recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// µs since the session started.
    pub at_us: u64,
    /// Who sent it.
    pub dir: Direction,
    /// The bytes as read.
    pub bytes: Vec<u8>,
}

/// A parsed recording.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recording {
    /// Header lines as `(key, value)`, values unescaped, in file order.
    pub header: Vec<(String, String)>,
    /// The chunks, in file order.
    pub chunks: Vec<Chunk>,
}

impl Recording {
    /// The first header value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.header
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Parses a recording; errors name the line.
    pub fn parse(text: &str) -> Result<Recording, String> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, l)) if l == MAGIC => {}
            _ => return Err(format!("line 1: expected '{MAGIC}'")),
        }
        let mut rec = Recording::default();
        let mut in_header = true;
        for (i, line) in lines {
            let n = i + 1;
            if line.is_empty() {
                continue;
            }
            if in_header {
                if line == "---" {
                    in_header = false;
                    continue;
                }
                let (k, v) = line.split_once(' ').unwrap_or((line, ""));
                rec.header.push((k.to_string(), unescape(v)));
                continue;
            }
            let mut parts = line.splitn(3, ' ');
            let at_us = parts
                .next()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| format!("line {n}: bad timestamp"))?;
            let dir = match parts.next() {
                Some("C") => Direction::Client,
                Some("B") => Direction::Backend,
                _ => return Err(format!("line {n}: direction must be C or B")),
            };
            let bytes =
                unhex(parts.next().unwrap_or("")).ok_or_else(|| format!("line {n}: bad hex"))?;
            rec.chunks.push(Chunk { at_us, dir, bytes });
        }
        if in_header {
            return Err("no '---' line ends the header".into());
        }
        Ok(rec)
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::labels::Labels;

    #[test]
    fn writes_and_parses_back() {
        let dir = std::env::temp_dir().join(format!("ferry-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        {
            let mut r = Recorder::new(&dir, 7, Timestamp(1000));
            r.data(Timestamp(1500), true, b"before login");
            let login = LoginName {
                tenant: Some("acme".into()),
                user: "app".into(),
                labels: Labels::default(),
            };
            let details = LoginDetails {
                user: "acme:app".into(),
                database: Some("d\tb".into()),
                capabilities: 0x1214, // no CLIENT_COMPRESS: compressed sessions are not recorded
                collation: 45,
                attributes: vec![("_client_name".into(), "x y".into())],
            };
            r.logged_in(Timestamp(2000), &login, &details);
            r.data(Timestamp(3000), true, &[1, 0, 0, 0, 0x0e]);
            r.data(Timestamp(4000), false, &[7, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]);
        }
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().ends_with("-7.ferryrec"))
            .unwrap()
            .path();
        let text = std::fs::read_to_string(&file).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let rec = Recording::parse(&text).unwrap();
        assert_eq!(rec.get("user"), Some("app"));
        assert_eq!(rec.get("tenant"), Some("acme"));
        assert_eq!(rec.get("database"), Some("d\tb"));
        assert_eq!(rec.get("capabilities"), Some("0x00001214"));
        assert_eq!(rec.chunks.len(), 2);
        assert_eq!(rec.chunks[0].at_us, 2000);
        assert_eq!(rec.chunks[0].dir, Direction::Client);
        assert_eq!(rec.chunks[1].bytes, vec![7, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]);
        assert!(!text.contains("password"));
    }
}
