//! A small, tolerant SQL lexer and the statement classification migration needs.
//!
//! It does not parse SQL: it skips comments, string literals and quoted
//! identifiers, splits multi-statements on top-level `;`, and looks for the few
//! keyword patterns that create or release session state a migration cannot
//! carry. When in doubt a statement is taken to *acquire* state (which blocks
//! a move) and never to *release* it.

/// A lexical token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    /// An unquoted word: keyword, identifier, function name or number.
    Word(String),
    /// A back-quoted identifier, unquoted.
    Quoted(String),
    /// A string literal's content, as bytes in the client's character set.
    Str(Vec<u8>),
    /// `@name`.
    UserVar(String),
    /// `@@[scope.]name`, lower-cased.
    SysVar(String),
    /// `:=`.
    Assign,
    /// Any other single punctuation byte.
    Punct(u8),
}

impl Token {
    fn is(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    /// The identifier this token names, if it can name one.
    fn ident(&self) -> Option<&str> {
        match self {
            Token::Word(w) | Token::Quoted(w) => Some(w),
            _ => None,
        }
    }
}

/// Splits `sql` into statements of tokens (empty statements dropped).
pub(crate) fn statements(sql: &[u8]) -> Vec<Vec<Token>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut depth = 0i32;
    let mut compound = false;
    let mut lexer = Lexer { s: sql, i: 0 };
    while let Some(t) = lexer.next() {
        if t == Token::Punct(b';') && depth <= 0 {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            depth = 0;
            compound = false;
            continue;
        }
        if current.is_empty() {
            compound = t.is("CREATE") || t.is("BEGIN");
        }
        if compound {
            // Stored-program bodies contain `;`: follow BEGIN/CASE ... END nesting.
            let after_end = current.last().is_some_and(|p: &Token| p.is("END"));
            let opens = (t.is("BEGIN") && (!current.is_empty() || sql_is_compound_begin(&lexer)))
                || (t.is("CASE") && !after_end);
            if opens {
                depth += 1;
            } else if after_end
                && ["IF", "LOOP", "WHILE", "REPEAT", "FOR"]
                    .iter()
                    .any(|k| t.is(k))
            {
                // `END IF` and friends close a block that was never counted.
                depth += 1;
            }
            if t.is("END") {
                depth -= 1;
            }
        }
        current.push(t);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// True when a statement-initial BEGIN opens a compound statement (`BEGIN NOT ATOMIC`).
fn sql_is_compound_begin(lexer: &Lexer<'_>) -> bool {
    let mut ahead = Lexer {
        s: lexer.s,
        i: lexer.i,
    };
    matches!(ahead.next(), Some(t) if t.is("NOT"))
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn peek(&self, k: usize) -> u8 {
        self.s.get(self.i + k).copied().unwrap_or(0)
    }

    fn next(&mut self) -> Option<Token> {
        loop {
            let c = *self.s.get(self.i)?;
            match c {
                b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c => self.i += 1,
                b'/' if self.peek(1) == b'*' => {
                    if self.peek(2) == b'!' || (self.peek(2) == b'M' && self.peek(3) == b'!') {
                        // Executable comment: its content is SQL the server runs.
                        self.i += if self.peek(2) == b'!' { 3 } else { 4 };
                        while self.peek(0).is_ascii_digit() {
                            self.i += 1;
                        }
                    } else {
                        match find(&self.s[self.i + 2..], b"*/") {
                            Some(end) => self.i += 2 + end + 2,
                            None => self.i = self.s.len(),
                        }
                    }
                }
                // The closing half of an executable comment.
                b'*' if self.peek(1) == b'/' => self.i += 2,
                b'-' if self.peek(1) == b'-'
                    && matches!(self.peek(2), b' ' | b'\t' | b'\r' | b'\n' | 0) =>
                {
                    self.skip_line()
                }
                b'#' => self.skip_line(),
                b'\'' | b'"' => return Some(Token::Str(self.quoted_bytes(c))),
                b'`' => return Some(Token::Quoted(self.quoted(c))),
                b'@' if self.peek(1) == b'@' => {
                    self.i += 2;
                    let mut name = self.word();
                    while self.peek(0) == b'.' {
                        self.i += 1;
                        name.push('.');
                        name.push_str(&self.word());
                    }
                    return Some(Token::SysVar(name.to_ascii_lowercase()));
                }
                b'@' => {
                    self.i += 1;
                    let name = match self.peek(0) {
                        q @ (b'\'' | b'"' | b'`') => self.quoted(q),
                        _ => self.word(),
                    };
                    return Some(Token::UserVar(name.to_ascii_lowercase()));
                }
                b':' if self.peek(1) == b'=' => {
                    self.i += 2;
                    return Some(Token::Assign);
                }
                c if is_word_byte(c) => return Some(Token::Word(self.word())),
                c => {
                    self.i += 1;
                    return Some(Token::Punct(c));
                }
            }
        }
    }

    fn skip_line(&mut self) {
        match self.s[self.i..].iter().position(|&b| b == b'\n') {
            Some(n) => self.i += n + 1,
            None => self.i = self.s.len(),
        }
    }

    fn word(&mut self) -> String {
        let start = self.i;
        while self.i < self.s.len() && is_word_byte(self.s[self.i]) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// An identifier quoted with `q`, as text.
    fn quoted(&mut self, q: u8) -> String {
        String::from_utf8_lossy(&self.quoted_bytes(q)).into_owned()
    }

    /// A literal or identifier quoted with `q`; doubled quotes and backslash escapes are honoured.
    fn quoted_bytes(&mut self, q: u8) -> Vec<u8> {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            if c == q {
                if self.peek(0) == q {
                    out.push(q);
                    self.i += 1;
                    continue;
                }
                break;
            }
            if c == b'\\' && q != b'`' {
                if let Some(&e) = self.s.get(self.i) {
                    // The server's escapes; `\%` and `\_` keep their backslash (for LIKE).
                    match e {
                        b'0' => out.push(0),
                        b'b' => out.push(0x08),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'Z' => out.push(0x1A),
                        b'%' | b'_' => out.extend_from_slice(&[b'\\', e]),
                        e => out.push(e),
                    }
                    self.i += 1;
                }
                continue;
            }
            out.push(c);
        }
        out
    }
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A table name as written: optional schema and table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TableName {
    pub schema: Option<String>,
    pub table: String,
}

/// Where a text `PREPARE` takes its statement from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PrepareSource {
    /// A string literal's content (bytes in the client's character set).
    Text(Vec<u8>),
    /// A user variable (its value at that moment is unknown to ferry).
    Variable(String),
}

/// What one statement does to the state a migration cares about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    /// `USE db`.
    pub use_db: Option<String>,
    /// `CREATE TEMPORARY TABLE`.
    pub temp_created: Vec<TableName>,
    /// `DROP [TEMPORARY] TABLE`.
    pub tables_dropped: Vec<TableName>,
    /// `GET_LOCK(name, ..)`; `None` when the name is not a literal.
    pub locks_got: Vec<Option<String>>,
    /// `RELEASE_LOCK(name)` with a literal name.
    pub locks_released: Vec<String>,
    /// `RELEASE_ALL_LOCKS()`.
    pub release_all_locks: bool,
    /// `LOCK TABLES`, `FLUSH TABLES ... WITH READ LOCK`, `FLUSH TABLES ... FOR EXPORT`.
    pub lock_tables: bool,
    /// `UNLOCK TABLES`.
    pub unlock_tables: bool,
    /// `LOCK INSTANCE FOR BACKUP`, `BACKUP STAGE`, `BACKUP LOCK`.
    pub backup_lock: bool,
    /// `UNLOCK INSTANCE`, `BACKUP STAGE END`, `BACKUP UNLOCK`.
    pub backup_unlock: bool,
    /// `XA START|BEGIN`.
    pub xa_start: bool,
    /// `XA COMMIT|ROLLBACK`.
    pub xa_end: bool,
    /// `SET TRANSACTION ...` (or `SET @@transaction_isolation` ...) for the next transaction only.
    pub set_transaction: bool,
    /// The statement runs in a transaction and so consumes one-shot transaction characteristics.
    pub transactional: bool,
    /// `SQL_CALC_FOUND_ROWS`.
    pub calc_found_rows: bool,
    /// User variables assigned.
    pub user_vars: Vec<String>,
    /// `LAST_INSERT_ID(expr)`: sets the value no OK packet reports.
    pub sets_last_insert_id: bool,
    /// A `SET` statement (reading its effects back leaves no diagnostics a client could miss).
    pub is_set: bool,
    /// `SET NAMES cs [COLLATE coll]`: the connection collation it sets (`None`: the
    /// charset's default). MariaDB's tracker reports the character sets but not this.
    pub names_collation: Option<Option<String>>,
    /// `PREPARE name FROM ...`.
    pub prepare: Option<(String, PrepareSource)>,
    /// `DEALLOCATE PREPARE name` / `DROP PREPARE name`.
    pub deallocate: Option<String>,
    /// `CALL` or text `EXECUTE`: runs statements ferry does not see.
    pub opaque: bool,
    /// The statement may change session state (so a reported state change is explained).
    pub changes_state: bool,
}

const ONE_SHOT_TRANSACTION_VARS: [&str; 4] = [
    "transaction_isolation",
    "tx_isolation",
    "transaction_read_only",
    "tx_read_only",
];

/// Classifies one statement.
pub(crate) fn classify(tokens: &[Token]) -> Effects {
    let mut e = Effects::default();
    let t: Vec<&Token> = tokens
        .iter()
        .skip_while(|t| **t == Token::Punct(b'('))
        .collect();
    let word = |i: usize, k: &str| t.get(i).is_some_and(|w| w.is(k));
    let first = t.first().and_then(|w| match w {
        Token::Word(w) => Some(w.to_ascii_uppercase()),
        _ => None,
    });
    match first.as_deref() {
        Some("USE") => e.use_db = t.get(1).and_then(|w| w.ident()).map(str::to_string),
        Some("SET") => {
            let mut i = 1;
            if word(1, "SESSION") || word(1, "LOCAL") || word(1, "GLOBAL") {
                i = 2;
            }
            if word(i, "TRANSACTION") && i == 1 {
                e.set_transaction = true;
            }
            if word(1, "NAMES") {
                let collate = t.iter().position(|w| w.is("COLLATE"));
                e.names_collation = Some(collate.and_then(|k| match t.get(k + 1) {
                    Some(Token::Str(c)) => Some(String::from_utf8_lossy(c).to_ascii_lowercase()),
                    Some(w) => w.ident().map(str::to_ascii_lowercase),
                    None => None,
                }));
            }
            for (j, w) in t.iter().enumerate() {
                if let Token::SysVar(name) = w {
                    let next_is_assign =
                        matches!(t.get(j + 1), Some(Token::Punct(b'=') | Token::Assign));
                    if next_is_assign && ONE_SHOT_TRANSACTION_VARS.contains(&name.as_str()) {
                        e.set_transaction = true;
                    }
                }
                if let Token::UserVar(name) = w {
                    if matches!(t.get(j + 1), Some(Token::Punct(b'='))) {
                        e.user_vars.push(name.clone());
                    }
                }
            }
        }
        Some("CREATE") => {
            let mut i = 1;
            if word(1, "OR") && word(2, "REPLACE") {
                i = 3;
            }
            if word(i, "TEMPORARY") && word(i + 1, "TABLE") {
                i += 2;
                if word(i, "IF") && word(i + 1, "NOT") && word(i + 2, "EXISTS") {
                    i += 3;
                }
                if let Some((name, _)) = table_name(&t, i) {
                    e.temp_created.push(name);
                }
            }
        }
        Some("DROP") => {
            let mut i = 1;
            if word(i, "TEMPORARY") {
                i += 1;
            }
            if word(i, "TABLE") || word(i, "TABLES") {
                i += 1;
                if word(i, "IF") && word(i + 1, "EXISTS") {
                    i += 2;
                }
                while let Some((name, next)) = table_name(&t, i) {
                    e.tables_dropped.push(name);
                    if matches!(t.get(next), Some(Token::Punct(b','))) {
                        i = next + 1;
                    } else {
                        break;
                    }
                }
            } else if word(1, "PREPARE") {
                e.deallocate = t
                    .get(2)
                    .and_then(|w| w.ident())
                    .map(str::to_ascii_lowercase);
            }
        }
        Some("DEALLOCATE") if word(1, "PREPARE") => {
            e.deallocate = t
                .get(2)
                .and_then(|w| w.ident())
                .map(str::to_ascii_lowercase);
        }
        Some("PREPARE") => {
            let name = t
                .get(1)
                .and_then(|w| w.ident())
                .map(str::to_ascii_lowercase);
            let source = match (word(2, "FROM"), t.get(3)) {
                (true, Some(Token::Str(s))) => Some(PrepareSource::Text(s.clone())),
                (true, Some(Token::UserVar(v))) => Some(PrepareSource::Variable(v.clone())),
                _ => None,
            };
            if let (Some(name), Some(source)) = (name, source) {
                e.prepare = Some((name, source));
            }
        }
        Some("LOCK") if word(1, "TABLE") || word(1, "TABLES") => e.lock_tables = true,
        Some("LOCK") if word(1, "INSTANCE") => e.backup_lock = true,
        Some("UNLOCK") if word(1, "TABLE") || word(1, "TABLES") => e.unlock_tables = true,
        Some("UNLOCK") if word(1, "INSTANCE") => e.backup_unlock = true,
        Some("BACKUP") if word(1, "STAGE") && word(2, "END") => e.backup_unlock = true,
        Some("BACKUP") if word(1, "UNLOCK") => e.backup_unlock = true,
        Some("BACKUP") => e.backup_lock = true,
        Some("FLUSH") => {
            let read_lock = t
                .windows(3)
                .any(|w| w[0].is("WITH") && w[1].is("READ") && w[2].is("LOCK"));
            let export = t.windows(2).any(|w| w[0].is("FOR") && w[1].is("EXPORT"));
            e.lock_tables = read_lock || export;
        }
        Some("XA") if word(1, "START") || word(1, "BEGIN") => e.xa_start = true,
        Some("XA") if word(1, "COMMIT") || word(1, "ROLLBACK") => e.xa_end = true,
        Some("CALL") | Some("EXECUTE") => e.opaque = true,
        Some(
            "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "WITH" | "TABLE" | "VALUES"
            | "LOAD" | "BEGIN" | "START" | "HANDLER" | "DO",
        ) => {}
        _ => {}
    }
    if matches!(
        first.as_deref(),
        Some(
            "SELECT"
                | "INSERT"
                | "UPDATE"
                | "DELETE"
                | "REPLACE"
                | "WITH"
                | "TABLE"
                | "VALUES"
                | "LOAD"
                | "BEGIN"
                | "START"
                | "CALL"
                | "EXECUTE"
                | "DO"
        )
    ) || e.xa_start
    {
        e.transactional = true;
    }
    // Patterns that can appear anywhere in a statement.
    for (j, w) in t.iter().enumerate() {
        let call = |name: &str| w.is(name) && matches!(t.get(j + 1), Some(Token::Punct(b'(')));
        if call("GET_LOCK") {
            e.locks_got.push(match t.get(j + 2) {
                Some(Token::Str(s)) if matches!(t.get(j + 3), Some(Token::Punct(b','))) => {
                    Some(String::from_utf8_lossy(s).into_owned())
                }
                _ => None,
            });
        } else if call("RELEASE_LOCK") {
            if let (Some(Token::Str(s)), Some(Token::Punct(b')'))) = (t.get(j + 2), t.get(j + 3)) {
                e.locks_released
                    .push(String::from_utf8_lossy(s).into_owned());
            }
        } else if call("RELEASE_ALL_LOCKS") {
            e.release_all_locks = true;
        } else if call("LAST_INSERT_ID") && !matches!(t.get(j + 2), Some(Token::Punct(b')'))) {
            e.sets_last_insert_id = true;
        } else if w.is("SQL_CALC_FOUND_ROWS") {
            e.calc_found_rows = true;
        } else if let Token::UserVar(name) = w {
            let assigned = matches!(t.get(j + 1), Some(Token::Assign));
            let into = (1..=j)
                .rev()
                .map(|k| t[k - 1])
                .find(|p| !matches!(p, Token::UserVar(_) | Token::Punct(b',')));
            if assigned || into.is_some_and(|p| p.is("INTO")) {
                e.user_vars.push(name.clone());
            }
        }
    }
    e.user_vars.dedup();
    e.is_set = first.as_deref() == Some("SET");
    e.changes_state = e.use_db.is_some()
        || first.as_deref() == Some("SET")
        || !e.temp_created.is_empty()
        || !e.tables_dropped.is_empty()
        || !e.locks_got.is_empty()
        || !e.locks_released.is_empty()
        || e.release_all_locks
        || e.lock_tables
        || e.unlock_tables
        || e.backup_lock
        || e.backup_unlock
        || e.xa_start
        || e.xa_end
        || !e.user_vars.is_empty()
        || e.prepare.is_some()
        || e.deallocate.is_some()
        || matches!(first.as_deref(), Some("DEALLOCATE" | "PREPARE"));
    e
}

/// A table name at `t[i]`; returns it and the index after it.
fn table_name(t: &[&Token], i: usize) -> Option<(TableName, usize)> {
    let first = t.get(i)?.ident()?.to_string();
    if matches!(t.get(i + 1), Some(Token::Punct(b'.'))) {
        let table = t.get(i + 2)?.ident()?.to_string();
        return Some((
            TableName {
                schema: Some(first),
                table,
            },
            i + 3,
        ));
    }
    Some((
        TableName {
            schema: None,
            table: first,
        },
        i + 1,
    ))
}
