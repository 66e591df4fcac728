//! `KILL <id>` and COM_PROCESS_KILL: clients know ferry's connection ids and
//! the thread ids of whatever backend their session ran on, so ferry
//! translates them to the thread the session runs as now. Passed on
//! untouched, the number would name some unrelated backend thread.
//!
//! [`classify`] sorts a command into what ferry translates, what it only lets
//! reach the session's own backend, and everything else; [`resolve`] finds
//! the session a number names; [`Gate`] finds the commands ferry must handle
//! alone in the client's byte stream.

mod gate;
mod resolve;
mod session;

pub use gate::Gate;
pub use resolve::{resolve, shared_with_another_tenant, Asker, Peer, Resolution};
pub(crate) use session::Intercept;

use crate::packets::flags::command::{COM_PROCESS_KILL, COM_QUERY, COM_STMT_PREPARE};
use crate::packets::ErrPacket;

/// ferry's handshake connection ids start here, far above the thread ids
/// backends hand out (MariaDB counts up from 1 and restarts at 1), so that a
/// `KILL n` can name either without mixing them up.
pub const FIRST_CONNECTION_ID: u32 = 1 << 30;

/// Whom a KILL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A number: a ferry connection id or a backend thread id.
    Id(u32),
    /// `CONNECTION_ID()`: the killer's own session.
    Own,
}

/// A kill request for one connection, as the client wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kill {
    /// Whom it names.
    pub target: Target,
    /// Only its running statement (`KILL QUERY`), not the connection.
    pub query_only: bool,
    /// MariaDB's `HARD`/`SOFT` modifier, kept as written.
    pub modifier: Option<&'static str>,
    /// Sent as COM_PROCESS_KILL rather than as SQL.
    pub command: bool,
}

/// What a command is, as far as KILL goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    /// Not a KILL: passed on.
    Other,
    /// A KILL by connection id, which ferry translates.
    Kill(Kill),
    /// A KILL ferry does not translate, or a statement it cannot tell is no
    /// KILL (`KILL USER`, `KILL QUERY ID`, an expression, a KILL among
    /// several statements or in an executable comment, a prepared KILL):
    /// it may reach only the session's own backend, and only while no other
    /// tenant's session shares that backend.
    Untranslated,
}

impl Kill {
    /// Recognises a kill by connection id in a command payload; anything else is `None`.
    pub fn parse(payload: &[u8]) -> Option<Kill> {
        match classify(payload) {
            Class::Kill(k) => Some(k),
            _ => None,
        }
    }

    /// The number the client gave (`None` for `CONNECTION_ID()`).
    pub fn id(&self) -> Option<u32> {
        match self.target {
            Target::Id(id) => Some(id),
            Target::Own => None,
        }
    }

    /// The statement that does the same to `thread` on its backend.
    pub fn sql_for(&self, thread: u32) -> String {
        let mut sql = String::from("KILL ");
        if let Some(m) = self.modifier {
            sql.push_str(m);
            sql.push(' ');
        }
        sql.push_str(if self.query_only {
            "QUERY "
        } else {
            "CONNECTION "
        });
        sql.push_str(&thread.to_string());
        sql
    }

    /// The command payload that does the same to `thread` on the backend.
    pub fn payload_for(&self, thread: u32) -> Vec<u8> {
        if self.command {
            let mut p = vec![COM_PROCESS_KILL];
            p.extend_from_slice(&thread.to_le_bytes());
            return p;
        }
        let mut p = vec![COM_QUERY];
        p.extend_from_slice(self.sql_for(thread).as_bytes());
        p
    }
}

/// ER_KILL_DENIED_ERROR, worded as MySQL does: the session belongs to another tenant.
pub fn not_owner(id: u32) -> ErrPacket {
    ErrPacket::new(1095, "HY000", format!("You are not owner of thread {id}"))
}

/// ER_NO_SUCH_THREAD.
pub fn no_such_thread(id: u32) -> ErrPacket {
    ErrPacket::new(1094, "HY000", format!("Unknown thread id: {id}"))
}

/// ER_NOT_SUPPORTED_YET: a KILL ferry does not translate, on a backend other tenants share.
pub fn untranslated_refused() -> ErrPacket {
    ErrPacket::new(
        1235,
        "42000",
        "ferry does not support this form of KILL on a backend shared with other tenants; \
         use KILL [QUERY] <id> with a connection id",
    )
}

/// Sorts one command payload (command byte first).
pub fn classify(payload: &[u8]) -> Class {
    match payload.split_first() {
        Some((&COM_PROCESS_KILL, rest)) => match <[u8; 4]>::try_from(rest) {
            Ok(id) => Class::Kill(Kill {
                target: Target::Id(u32::from_le_bytes(id)),
                query_only: false,
                modifier: None,
                command: true,
            }),
            Err(_) => Class::Untranslated,
        },
        Some((&COM_QUERY, sql)) => classify_sql(sql),
        // A prepared KILL runs untranslated, whatever its parameters say.
        Some((&COM_STMT_PREPARE, sql)) => match classify_sql(sql) {
            Class::Other => Class::Other,
            _ => Class::Untranslated,
        },
        _ => Class::Other,
    }
}

/// Whether a statement that starts with `head` (the first bytes of its text)
/// may be a KILL: what [`classify_sql`] must see whole. Cheap, for every query.
pub fn may_be_kill(head: &[u8]) -> Option<bool> {
    let first = head.iter().find(|b| !b.is_ascii_whitespace())?;
    Some(matches!(first, b'k' | b'K' | b'/' | b'#' | b'-'))
}

/// Sorts a statement's text.
pub fn classify_sql(sql: &[u8]) -> Class {
    let mut lex = Lexer::new(sql);
    let first = lex.next();
    if lex.executable {
        return guess(sql);
    }
    let Some(Token::Word(w)) = first else {
        return more_statements(&mut lex, first, sql);
    };
    if !w.eq_ignore_ascii_case(b"KILL") {
        return more_statements(&mut lex, Some(Token::Word(w)), sql);
    }
    let kill = parse_kill(&mut lex);
    if lex.executable {
        return guess(sql);
    }
    match kill {
        Some(k) => {
            // Nothing may follow but `;` and then nothing.
            let mut t = lex.next();
            if t == Some(Token::Punct(b';')) {
                t = lex.next();
            }
            if t.is_none() && !lex.executable {
                Class::Kill(k)
            } else {
                Class::Untranslated
            }
        }
        None => Class::Untranslated,
    }
}

/// The rest of a statement that is no KILL: one after a `;` may be.
fn more_statements<'a>(lex: &mut Lexer<'a>, mut t: Option<Token<'a>>, sql: &[u8]) -> Class {
    loop {
        match t {
            None => return Class::Other,
            Some(Token::Punct(b';')) => {
                let next = lex.next();
                if matches!(next, Some(Token::Word(w)) if w.eq_ignore_ascii_case(b"KILL")) {
                    return Class::Untranslated;
                }
                t = next;
                continue;
            }
            Some(_) => {}
        }
        if lex.executable {
            return guess(sql);
        }
        t = lex.next();
    }
}

/// A statement with an executable comment (`/*! ... */`, `/*M! ... */`):
/// the server runs what ferry would have to parse as the server does. If it
/// mentions KILL at all, it is not translated.
fn guess(sql: &[u8]) -> Class {
    let kill = sql.windows(4).any(|w| w.eq_ignore_ascii_case(b"kill"));
    if kill {
        Class::Untranslated
    } else {
        Class::Other
    }
}

/// `[HARD|SOFT] [CONNECTION|QUERY] <id>` after `KILL`; `None` for every other form.
fn parse_kill(lex: &mut Lexer<'_>) -> Option<Kill> {
    let mut t = lex.next();
    let mut modifier = None;
    if let Some(Token::Word(w)) = t {
        for m in ["HARD", "SOFT"] {
            if w.eq_ignore_ascii_case(m.as_bytes()) {
                modifier = Some(m);
            }
        }
        if modifier.is_some() {
            t = lex.next();
        }
    }
    let mut query_only = false;
    if let Some(Token::Word(w)) = t {
        if w.eq_ignore_ascii_case(b"QUERY") {
            query_only = true;
            t = lex.next();
        } else if w.eq_ignore_ascii_case(b"CONNECTION") {
            t = lex.next();
        }
    }
    let target = match t? {
        Token::Word(w) if w.iter().all(u8::is_ascii_digit) => {
            Target::Id(std::str::from_utf8(w).ok()?.parse().ok()?)
        }
        Token::Word(w) if w.eq_ignore_ascii_case(b"CONNECTION_ID") => {
            if lex.next()? != Token::Punct(b'(') || lex.next()? != Token::Punct(b')') {
                return None;
            }
            Target::Own
        }
        _ => return None,
    };
    Some(Kill {
        target,
        query_only,
        modifier,
        command: false,
    })
}

/// One token of SQL text, as far as KILL needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token<'a> {
    /// A word or a number.
    Word(&'a [u8]),
    /// A quoted string or identifier.
    Quoted,
    /// Any other byte.
    Punct(u8),
}

/// Splits SQL into tokens, skipping whitespace and comments the server skips.
struct Lexer<'a> {
    sql: &'a [u8],
    at: usize,
    /// An executable comment was seen: the text means what the server makes of it.
    executable: bool,
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a [u8]) -> Self {
        Lexer {
            sql,
            at: 0,
            executable: false,
        }
    }

    fn rest(&self) -> &'a [u8] {
        &self.sql[self.at.min(self.sql.len())..]
    }

    fn skip_space_and_comments(&mut self) {
        loop {
            let rest = self.rest();
            match rest {
                [b, ..] if b.is_ascii_whitespace() => self.at += 1,
                [b'/', b'*', b'!', ..] | [b'/', b'*', b'M', b'!', ..] => {
                    self.executable = true;
                    self.at = self.sql.len();
                    return;
                }
                [b'/', b'*', ..] => match find(&rest[2..], b"*/") {
                    Some(end) => self.at += 2 + end + 2,
                    // Unterminated: the server refuses it.
                    None => self.at = self.sql.len(),
                },
                [b'#', ..] => self.skip_line(),
                [b'-', b'-', c, ..] if c.is_ascii_whitespace() || c.is_ascii_control() => {
                    self.skip_line()
                }
                [b'-', b'-'] => self.at = self.sql.len(),
                _ => return,
            }
        }
    }

    fn skip_line(&mut self) {
        match self.rest().iter().position(|&b| b == b'\n') {
            Some(n) => self.at += n + 1,
            None => self.at = self.sql.len(),
        }
    }

    fn next(&mut self) -> Option<Token<'a>> {
        self.skip_space_and_comments();
        let rest = self.rest();
        let &first = rest.first()?;
        if first.is_ascii_alphanumeric() || first == b'_' || first == b'$' || first >= 0x80 {
            let n = rest
                .iter()
                .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80))
                .unwrap_or(rest.len());
            self.at += n;
            return Some(Token::Word(&rest[..n]));
        }
        if matches!(first, b'\'' | b'"' | b'`') {
            let mut i = 1;
            while i < rest.len() {
                match rest[i] {
                    b'\\' if first != b'`' => i += 2,
                    b if b == first => {
                        if rest.get(i + 1) == Some(&first) {
                            i += 2;
                        } else {
                            break;
                        }
                    }
                    _ => i += 1,
                }
            }
            self.at += (i + 1).min(rest.len());
            return Some(Token::Quoted);
        }
        self.at += 1;
        Some(Token::Punct(first))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A statement ferry runs on another backend on a client's behalf, logged in as that client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteStatement {
    /// The backend's name, for messages.
    pub backend: String,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// The client's bare user name.
    pub user: String,
    /// The client's recovered secret (the backend checks its privileges).
    pub secret: crate::auth::Secret,
    /// The statement.
    pub sql: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(s: &str) -> Class {
        classify_sql(s.as_bytes())
    }

    fn kill(s: &str) -> Kill {
        match sql(s) {
            Class::Kill(k) => k,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn recognises_the_forms_that_name_a_connection_id() {
        assert_eq!(kill("KILL 7").target, Target::Id(7));
        assert!(!kill("kill connection 7;").query_only);
        assert!(kill("  KILL QUERY 12  ").query_only);
        assert_eq!(kill("KILL HARD QUERY 3").modifier, Some("HARD"));
        assert_eq!(kill("kIlL SoFt 3 ; ").modifier, Some("SOFT"));
        assert_eq!(kill("/* why */ KILL -- now\n 9").target, Target::Id(9));
        assert_eq!(kill("# c\nKILL 9 /* after */").target, Target::Id(9));
        assert_eq!(kill("KILL CONNECTION_ID()").target, Target::Own);
        let k = Kill::parse(&[COM_PROCESS_KILL, 9, 0, 0, 0]).unwrap();
        assert_eq!((k.target, k.command), (Target::Id(9), true));
    }

    #[test]
    fn kills_ferry_does_not_translate_are_untranslated() {
        for s in [
            "KILL USER app",
            "KILL QUERY ID 5",
            "KILL 5; SELECT 1",
            "SELECT 1; KILL 5",
            "select 1;kill 5",
            "KILL 2+3",
            "KILL (5)",
            "KILL @id",
            "KILL 99999999999",
            "/*! KILL 5 */",
            "/*M!100000 KILL 5 */",
            "KILL /*!5*/",
            "KILL 5 /*! , 6 */",
        ] {
            assert_eq!(sql(s), Class::Untranslated, "{s}");
        }
        assert_eq!(classify(&[COM_PROCESS_KILL, 1, 0]), Class::Untranslated);
        assert_eq!(
            classify(b"\x16KILL ?"),
            Class::Untranslated,
            "a prepared KILL"
        );
    }

    #[test]
    fn leaves_everything_else_alone() {
        for s in [
            "SELECT 'KILL 5'",
            "SELECT 1; SELECT 'x;KILL 5'",
            "/*!40101 SET NAMES utf8 */",
            "SELECT `kill`",
            "-- KILL 5\nSELECT 1",
            "SELECT killer FROM t",
            "",
        ] {
            assert_eq!(sql(s), Class::Other, "{s}");
        }
        assert_eq!(classify(b"\x16SELECT ?"), Class::Other);
    }

    #[test]
    fn the_cheap_look_flags_every_possible_kill() {
        for s in [
            "KILL 1",
            " kill 1",
            "/* */KILL 1",
            "# x\nKILL 1",
            "-- x\nKILL 1",
        ] {
            assert_eq!(may_be_kill(s.as_bytes()), Some(true), "{s}");
        }
        assert_eq!(may_be_kill(b"SELECT 1"), Some(false));
        assert_eq!(may_be_kill(b"   "), None);
    }

    #[test]
    fn rewrites_to_the_backend_thread() {
        assert_eq!(kill("kill query 7").payload_for(501), b"\x03KILL QUERY 501");
        assert_eq!(
            kill("KILL SOFT 7").payload_for(9),
            b"\x03KILL SOFT CONNECTION 9"
        );
        let k = Kill::parse(&[COM_PROCESS_KILL, 7, 0, 0, 0]).unwrap();
        assert_eq!(k.payload_for(0x0102), vec![COM_PROCESS_KILL, 2, 1, 0, 0]);
    }
}
