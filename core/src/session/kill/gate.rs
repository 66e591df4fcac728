//! Finds, in the client's byte stream, the commands ferry must handle alone
//! (a KILL it translates or guards, COM_CHANGE_USER): pipelined behind other
//! commands or cut across reads, they must never reach the backend as the
//! client wrote them.
//!
//! The cost on the hot path is one look at each packet's header and first
//! bytes; the bytes themselves pass on as read.

use bytes::BytesMut;

use crate::kill::{classify_sql, may_be_kill, Class};
use crate::packets::flags::command::{
    COM_CHANGE_USER, COM_PROCESS_KILL, COM_QUERY, COM_SET_OPTION, COM_STMT_PREPARE,
};
use crate::wire::{frame_header, HEADER_LEN, MAX_FRAME_PAYLOAD};

/// Where the client's packets begin, and the bytes held from one that must wait.
#[derive(Debug, Default)]
pub struct Gate {
    /// Bytes of the current packet still to come (its header was looked at).
    rest: usize,
    /// The current packet is as long as a frame gets: the next one continues it.
    continued: bool,
    /// Client bytes from the start of a command that must wait, and all after it.
    pub held: BytesMut,
    /// The server runs several statements in one query (the client's
    /// `CLIENT_MULTI_STATEMENTS`, or `COM_SET_OPTION` since): only then is a
    /// query's text searched for a KILL after a `;`.
    multi_statements: bool,
}

/// COM_SET_OPTION's argument that turns multi-statements on.
const MULTI_STATEMENTS_ON: [u8; 2] = [0, 0];

impl Gate {
    /// A gate for a client that runs several statements per query or not.
    pub fn new(multi_statements: bool) -> Self {
        Gate {
            multi_statements,
            ..Gate::default()
        }
    }

    /// Where in `data` the first command starts that must wait (`None`: all
    /// of it may pass). `data` continues what was scanned before; the gate
    /// then stands at that offset, the start of a packet.
    pub fn scan(&mut self, data: &[u8]) -> Option<usize> {
        let mut at = 0;
        loop {
            let left = data.len() - at;
            if self.rest >= left {
                self.rest -= left;
                return None;
            }
            at += self.rest;
            self.rest = 0;
            if at == data.len() {
                return None;
            }
            let packet = &data[at..];
            // A header cut by the read: the next read tells what it is.
            let Some((len, seq)) = frame_header(packet) else {
                return Some(at);
            };
            let continuation = std::mem::replace(&mut self.continued, len == MAX_FRAME_PAYLOAD);
            // Continuations and packets inside a command's exchange (LOCAL
            // INFILE data, auth replies) are no commands.
            if !continuation && seq == 0 && len > 0 {
                let Some(&command) = packet.get(HEADER_LEN) else {
                    self.continued = continuation;
                    return Some(at);
                };
                let end = packet.len().min(HEADER_LEN + len);
                let whole = packet.len() >= HEADER_LEN + len;
                let text = &packet[HEADER_LEN + 1..end];
                let wait = match command {
                    COM_CHANGE_USER | COM_PROCESS_KILL => true,
                    COM_QUERY | COM_STMT_PREPARE => match may_be_kill(text) {
                        Some(true) => true,
                        // Only blanks so far: a KILL may follow.
                        None => !whole,
                        // Several statements: one after a `;` may be a KILL.
                        Some(false) => {
                            self.multi_statements
                                && whole
                                && text.contains(&b';')
                                && classify_sql(text) != Class::Other
                        }
                    },
                    COM_SET_OPTION => {
                        if let Some(option) = text.get(..2) {
                            self.multi_statements = option == MULTI_STATEMENTS_ON;
                        }
                        false
                    }
                    _ => false,
                };
                if wait {
                    self.continued = continuation;
                    return Some(at);
                }
            }
            self.rest = HEADER_LEN + len;
        }
    }

    /// The length of the first packet held, header included, once it is all there.
    pub fn whole_first(&self) -> Option<usize> {
        let (len, _) = frame_header(&self.held)?;
        let total = HEADER_LEN + len;
        (self.held.len() >= total).then_some(total)
    }

    /// The first packet held is incomplete and passes on as far as it
    /// came: the gate skips the rest of it.
    pub fn pass_first_in_part(&mut self) -> Option<BytesMut> {
        let (len, _) = frame_header(&self.held)?;
        let total = HEADER_LEN + len;
        if self.held.len() >= total {
            return None;
        }
        self.rest = total - self.held.len();
        self.continued = len == MAX_FRAME_PAYLOAD;
        Some(self.held.split())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::frame;

    fn query(sql: &str) -> Vec<u8> {
        let mut p = vec![COM_QUERY];
        p.extend_from_slice(sql.as_bytes());
        frame(&p, 0).to_vec()
    }

    #[test]
    fn ordinary_commands_pass_in_any_cut() {
        let stream = [query("SELECT 1"), query("SELECT 'kill'; SELECT 2")].concat();
        for cut in 0..=stream.len() {
            let mut g = Gate::default();
            let first = g.scan(&stream[..cut]);
            // A header or a first byte cut by the read waits for the next read.
            let from = first.unwrap_or(cut);
            assert!(g.scan(&stream[from..]).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn a_kill_behind_a_query_is_found_where_it_starts() {
        let select = query("SELECT SLEEP(1)");
        let stream = [select.clone(), query("kill 5")].concat();
        let mut g = Gate::default();
        assert_eq!(g.scan(&stream), Some(select.len()));
        let mut g = Gate::default();
        assert_eq!(g.scan(&stream[..select.len() + 6]), Some(select.len()));
        let multi = query("SELECT 1; KILL 5");
        assert_eq!(Gate::new(true).scan(&multi), Some(0));
        assert_eq!(
            Gate::new(false).scan(&multi),
            None,
            "one statement per query"
        );
        let change_user = frame(&[COM_CHANGE_USER, b'u', 0], 0);
        assert_eq!(Gate::default().scan(&change_user), Some(0));
    }

    #[test]
    fn com_set_option_turns_the_search_after_a_semicolon_on_and_off() {
        let multi = query("SELECT 1; KILL 5");
        let mut g = Gate::new(false);
        assert_eq!(g.scan(&frame(&[COM_SET_OPTION, 0, 0], 0)), None);
        assert_eq!(g.scan(&multi), Some(0));
        let mut g = Gate::new(true);
        assert_eq!(g.scan(&frame(&[COM_SET_OPTION, 1, 0], 0)), None);
        assert_eq!(g.scan(&multi), None);
    }

    #[test]
    fn data_packets_are_no_commands() {
        // LOCAL INFILE content that looks like a KILL.
        let mut p = frame(b"\x03KILL 5", 2).to_vec();
        p.extend_from_slice(&query("SELECT 1"));
        assert_eq!(Gate::default().scan(&p), None);
    }
}
