//! `KILL <id>` and COM_PROCESS_KILL: clients know ferry's connection ids, not
//! the backends' thread ids, so ferry translates them. Passed on untouched,
//! the id would name some unrelated backend thread.

use crate::packets::flags::command::{COM_PROCESS_KILL, COM_QUERY};

/// A kill request for one connection, by the id ferry gave the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kill {
    /// The ferry connection id to kill.
    pub target: u32,
    /// Only its running statement (`KILL QUERY`), not the connection.
    pub query_only: bool,
    /// MariaDB's `HARD`/`SOFT` modifier, kept as written.
    pub modifier: Option<&'static str>,
    /// Sent as COM_PROCESS_KILL rather than as SQL.
    pub command: bool,
}

impl Kill {
    /// Recognises a kill by connection id in a command payload; anything else
    /// (`KILL USER`, `KILL QUERY ID`, other statements) is `None`.
    pub fn parse(payload: &[u8]) -> Option<Kill> {
        match payload.split_first()? {
            (&COM_PROCESS_KILL, rest) if rest.len() == 4 => Some(Kill {
                target: u32::from_le_bytes(rest.try_into().ok()?),
                query_only: false,
                modifier: None,
                command: true,
            }),
            // A cheap look at the first bytes before any text work: this runs for every query.
            (&COM_QUERY, sql) if starts_with_kill(sql) => parse_sql(std::str::from_utf8(sql).ok()?),
            _ => None,
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

fn starts_with_kill(sql: &[u8]) -> bool {
    let start = sql
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(sql.len());
    sql.get(start..start + 4)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"kill"))
}

fn parse_sql(sql: &str) -> Option<Kill> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let mut words = sql.split_ascii_whitespace().peekable();
    if !words.next()?.eq_ignore_ascii_case("KILL") {
        return None;
    }
    let mut modifier = None;
    if let Some(w) = words.peek() {
        for m in ["HARD", "SOFT"] {
            if w.eq_ignore_ascii_case(m) {
                modifier = Some(m);
            }
        }
        if modifier.is_some() {
            words.next();
        }
    }
    let mut query_only = false;
    match words.peek() {
        Some(w) if w.eq_ignore_ascii_case("QUERY") => {
            query_only = true;
            words.next();
        }
        Some(w) if w.eq_ignore_ascii_case("CONNECTION") => {
            words.next();
        }
        _ => {}
    }
    let target = words.next()?.parse::<u32>().ok()?;
    if words.next().is_some() {
        return None;
    }
    Some(Kill {
        target,
        query_only,
        modifier,
        command: false,
    })
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

    fn sql(s: &str) -> Option<Kill> {
        let mut p = vec![COM_QUERY];
        p.extend_from_slice(s.as_bytes());
        Kill::parse(&p)
    }

    #[test]
    fn recognises_the_forms_that_name_a_connection_id() {
        assert_eq!(sql("KILL 7").unwrap().target, 7);
        assert!(!sql("kill connection 7;").unwrap().query_only);
        assert!(sql("  KILL QUERY 12  ").unwrap().query_only);
        assert_eq!(sql("KILL HARD QUERY 3").unwrap().modifier, Some("HARD"));
        let k = Kill::parse(&[COM_PROCESS_KILL, 9, 0, 0, 0]).unwrap();
        assert_eq!((k.target, k.command), (9, true));
    }

    #[test]
    fn leaves_everything_else_alone() {
        assert_eq!(sql("KILL USER app"), None);
        assert_eq!(sql("KILL QUERY ID 5"), None);
        assert_eq!(sql("KILL 5; SELECT 1"), None);
        assert_eq!(sql("SELECT 'KILL 5'"), None);
        assert_eq!(sql("KILL -1"), None);
        assert_eq!(Kill::parse(&[COM_PROCESS_KILL, 1, 0]), None);
    }

    #[test]
    fn rewrites_to_the_backend_thread() {
        assert_eq!(
            sql("kill query 7").unwrap().payload_for(501),
            b"\x03KILL QUERY 501"
        );
        assert_eq!(
            sql("KILL SOFT 7").unwrap().payload_for(9),
            b"\x03KILL SOFT CONNECTION 9"
        );
        let k = Kill::parse(&[COM_PROCESS_KILL, 7, 0, 0, 0]).unwrap();
        assert_eq!(k.payload_for(0x0102), vec![COM_PROCESS_KILL, 2, 1, 0, 0]);
    }
}
