//! The session state a migration must carry, and what forbids a migration.
//!
//! [`SessionState`] is fed the [`Event`]s of a [`crate::tracker::Tracker`] and
//! records state only from statements that succeeded: the session trackers of
//! OK packets are authoritative, and the SQL text of a command counts only once
//! its result says it ran. Where it cannot be sure (a multi-statement whose
//! results it cannot line up with its statements), anything that *acquires*
//! unmovable state is recorded and nothing that *releases* it.

mod sql;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::restore::{PrepareContext, UserVariable};
use crate::tracker::{Command, Event, Outcome, SqlText, TrackItem};

use sql::{Effects, PrepareSource, TableName};

/// Longest statement text quoted in a blocker's reason.
const QUOTE_LIMIT: usize = 80;

/// A statement prepared with `COM_STMT_PREPARE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedStatement {
    /// The server's statement id (the one the client knows).
    pub id: u32,
    /// The SQL text.
    pub sql: Vec<u8>,
    /// Parameter count.
    pub params: u16,
    /// Column count.
    pub columns: u16,
    /// Parameter types last bound with `new_params_bound_flag = 1`.
    pub param_types: Option<Vec<u16>>,
    /// The database, `sql_mode` and character set it was prepared under.
    pub context: PrepareContext,
    /// What executing it does (classified once, at prepare time).
    effects: Effects,
}

/// A statement prepared with text `PREPARE name FROM '...'`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedStatement {
    /// The name (lower case: names are case-insensitive).
    pub name: String,
    /// The SQL text (bytes in the character set the client sent it in), or
    /// `None` when it was prepared from a user variable.
    pub sql: Option<Vec<u8>>,
    /// The database, `sql_mode` and character set it was prepared under.
    pub context: PrepareContext,
}

/// Something that pins a session to its backend, with a reason for operators.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Blocker {
    /// A temporary table exists.
    TemporaryTable {
        /// Schema it was created in (as far as known).
        schema: Option<String>,
        /// Table name.
        table: String,
    },
    /// A named lock (`GET_LOCK`) is held; `None` when its name was not a literal.
    NamedLock(Option<String>),
    /// `LOCK TABLES` or `FLUSH TABLES WITH READ LOCK` is in force.
    TableLocks,
    /// A backup lock (`LOCK INSTANCE FOR BACKUP`, `BACKUP STAGE`, `BACKUP LOCK`) is held.
    BackupLock,
    /// An XA transaction is active.
    Xa,
    /// `SET TRANSACTION` characteristics wait for the next transaction.
    SetTransaction,
    /// `SQL_CALC_FOUND_ROWS` ran; `FOUND_ROWS()` belongs to this backend until the next statement.
    CalcFoundRows,
    /// The server reported a session state change after a statement ferry cannot explain.
    UnexplainedStateChange {
        /// The statement (cut to a few dozen characters).
        statement: String,
    },
    /// A statement was too long to classify in full.
    UnclassifiedStatement {
        /// Its beginning.
        statement: String,
    },
    /// A text prepared statement's SQL came from a user variable and cannot be re-prepared.
    PreparedFromVariable {
        /// The statement name.
        name: String,
    },
    /// The last statement left warnings the client may still read (`SHOW WARNINGS`).
    Warnings(u16),
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::TemporaryTable { schema, table } => match schema {
                Some(s) => write!(f, "temporary table `{s}`.`{table}` exists"),
                None => write!(f, "temporary table `{table}` exists"),
            },
            Blocker::NamedLock(Some(name)) => write!(f, "named lock '{name}' is held (GET_LOCK)"),
            Blocker::NamedLock(None) => write!(f, "a named lock is held (GET_LOCK)"),
            Blocker::TableLocks => write!(
                f,
                "tables are locked (LOCK TABLES / FLUSH TABLES WITH READ LOCK)"
            ),
            Blocker::BackupLock => write!(f, "a backup lock is held"),
            Blocker::Xa => write!(f, "an XA transaction is active"),
            Blocker::SetTransaction => {
                write!(
                    f,
                    "SET TRANSACTION characteristics are pending for the next transaction"
                )
            }
            Blocker::CalcFoundRows => {
                write!(f, "SQL_CALC_FOUND_ROWS ran; FOUND_ROWS() is pending")
            }
            Blocker::UnexplainedStateChange { statement } => {
                write!(
                    f,
                    "the server reported a session state change after: {statement}"
                )
            }
            Blocker::UnclassifiedStatement { statement } => {
                write!(f, "a statement too long to classify ran: {statement}")
            }
            Blocker::PreparedFromVariable { name } => write!(
                f,
                "prepared statement '{name}' was prepared from a user variable"
            ),
            Blocker::Warnings(n) => write!(
                f,
                "the last statement left {n} warning(s) the client may still read"
            ),
        }
    }
}

/// What a migration must carry, and what blocks it, for one session.
#[derive(Clone, Debug, Default)]
pub struct SessionState {
    database: Option<String>,
    variables: BTreeMap<String, String>,
    prepared: BTreeMap<u32, PreparedStatement>,
    named: BTreeMap<String, NamedStatement>,
    user_variables: BTreeSet<String>,
    last_insert_id: u64,
    temp_tables: BTreeSet<TableName>,
    /// Named locks and how many times each was taken (MySQL locks are re-entrant).
    named_locks: BTreeMap<Option<String>, u32>,
    table_locks: bool,
    backup_lock: bool,
    xa: bool,
    set_transaction: bool,
    calc_found_rows: bool,
    unexplained: BTreeSet<String>,
    unclassified: BTreeSet<String>,
    /// Warnings of the last response, readable until the next command.
    warnings: u16,
    /// User variables as last read from the server, and whether a statement
    /// may have changed them since (then only the server knows them).
    user_values: Vec<UserVariable>,
    user_values_stale: bool,
    /// `LAST_INSERT_ID(expr)` ran: only the server knows the value now.
    last_insert_id_stale: bool,
    /// Only `SET` statements made the values stale: ferry may read them back
    /// right away (nothing a client reads afterwards, such as `ROW_COUNT()`, changes).
    stale_by_set_only: bool,
    pending: Pending,
}

/// The command whose response is being followed.
#[derive(Clone, Debug, Default)]
enum Pending {
    #[default]
    None,
    Query {
        text: SqlText,
        statements: Vec<Effects>,
        /// Per completed result: whether it reported a state change.
        results: Vec<bool>,
        changed: bool,
    },
    Prepare(SqlText),
    InitDb(String),
    Execute {
        id: u32,
        param_types: Option<Vec<u16>>,
        results: usize,
        changed: bool,
    },
    /// COM_CHANGE_USER or COM_RESET_CONNECTION.
    Reset {
        keep_database: bool,
    },
    Other {
        changed: bool,
    },
}

impl SessionState {
    /// An empty state, as right after login.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current database, as far as known.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// Sets the current database (the one the session logged in with).
    pub fn set_database(&mut self, database: Option<String>) {
        self.database = database;
    }

    /// System variables the session changed, latest value by name.
    pub fn variables(&self) -> &BTreeMap<String, String> {
        &self.variables
    }

    /// Statements prepared with `COM_STMT_PREPARE`, by id.
    pub fn prepared(&self) -> impl Iterator<Item = &PreparedStatement> {
        self.prepared.values()
    }

    /// Statements prepared with text `PREPARE`, by name.
    pub fn named_prepared(&self) -> impl Iterator<Item = &NamedStatement> {
        self.named.values()
    }

    /// Names of user variables the session may have set (values are read at migration time).
    pub fn user_variables(&self) -> &BTreeSet<String> {
        &self.user_variables
    }

    /// User variables as last read from the server (see [`SessionState::server_values_known`]).
    pub fn user_values(&self) -> &[UserVariable] {
        &self.user_values
    }

    /// True when [`SessionState::user_values`] and [`SessionState::last_insert_id`]
    /// are still what the server has (no statement changed them behind ferry's back
    /// since they were read).
    pub fn server_values_known(&self) -> bool {
        !self.user_values_stale && !self.last_insert_id_stale
    }

    /// True when ferry should read the server's values back now, so that it knows
    /// them should the backend die (only after `SET`s: see the field).
    pub fn wants_server_values(&self) -> bool {
        !self.server_values_known() && self.stale_by_set_only
    }

    /// Records what was just read from the server: user variables and `LAST_INSERT_ID()`.
    pub fn set_server_values(&mut self, values: Vec<UserVariable>, last_insert_id: u64) {
        self.user_values = values;
        self.user_values_stale = false;
        self.last_insert_id = last_insert_id;
        self.last_insert_id_stale = false;
    }

    /// The server would not tell its values (a read-back failed): ferry stops
    /// reading them back after each `SET`. A move still asks; until one gets
    /// them, a failover cannot restore them.
    pub fn server_values_unreadable(&mut self) {
        self.stale_by_set_only = false;
    }

    /// The last non-zero insert id an OK packet reported.
    pub fn last_insert_id(&self) -> u64 {
        self.last_insert_id
    }

    /// What pins the session to its backend now.
    pub fn blockers(&self) -> Vec<Blocker> {
        let mut b = Vec::new();
        for t in &self.temp_tables {
            b.push(Blocker::TemporaryTable {
                schema: t.schema.clone(),
                table: t.table.clone(),
            });
        }
        for name in self.named_locks.keys() {
            b.push(Blocker::NamedLock(name.clone()));
        }
        if self.table_locks {
            b.push(Blocker::TableLocks);
        }
        if self.backup_lock {
            b.push(Blocker::BackupLock);
        }
        if self.xa {
            b.push(Blocker::Xa);
        }
        if self.set_transaction {
            b.push(Blocker::SetTransaction);
        }
        if self.calc_found_rows {
            b.push(Blocker::CalcFoundRows);
        }
        if self.warnings > 0 {
            b.push(Blocker::Warnings(self.warnings));
        }
        for s in &self.unexplained {
            b.push(Blocker::UnexplainedStateChange {
                statement: s.clone(),
            });
        }
        for s in &self.unclassified {
            b.push(Blocker::UnclassifiedStatement {
                statement: s.clone(),
            });
        }
        for n in self.named.values().filter(|n| n.sql.is_none()) {
            b.push(Blocker::PreparedFromVariable {
                name: n.name.clone(),
            });
        }
        b
    }

    /// The blockers in words, for the admin API and logs.
    pub fn blocked_by(&self) -> Vec<String> {
        self.blockers().iter().map(ToString::to_string).collect()
    }

    /// Takes in one tracker event.
    pub fn on_event(&mut self, event: &Event) {
        match event {
            Event::Command { command, .. } => {
                self.warnings = 0;
                self.on_command(command)
            }
            Event::Ok { ok, trackers, .. } => {
                self.warnings = ok.warnings;
                if let Pending::Reset { keep_database } = self.pending {
                    // The OK means the reset happened; what it reports belongs to the new session.
                    self.reset(keep_database);
                }
                if ok.last_insert_id != 0 {
                    self.last_insert_id = ok.last_insert_id;
                }
                self.on_trackers(trackers);
            }
            Event::Prepared {
                id,
                params,
                columns,
            } => {
                if let Pending::Prepare(text) = &self.pending {
                    let effects = sql::statements(&text.text)
                        .first()
                        .map(|t| sql::classify(t))
                        .unwrap_or_default();
                    if text.truncated {
                        self.unclassified.insert(quote(&text.text));
                    }
                    self.prepared.insert(
                        *id,
                        PreparedStatement {
                            id: *id,
                            sql: text.text.clone(),
                            params: *params,
                            columns: *columns,
                            param_types: None,
                            context: PrepareContext::of(self.database.as_deref(), &self.variables),
                            effects,
                        },
                    );
                }
            }
            Event::ResultDone { .. } => match &mut self.pending {
                Pending::Query {
                    results, changed, ..
                } => results.push(std::mem::take(changed)),
                Pending::Execute { results, .. } => *results += 1,
                _ => {}
            },
            Event::ResponseDone { outcome } => {
                let pending = std::mem::take(&mut self.pending);
                self.on_response(pending, *outcome);
            }
            Event::Eof { eof, .. } => self.warnings = eof.warnings,
            Event::Err { .. } => self.warnings = 0,
            Event::LocalInfile { .. } => {}
            Event::Replication | Event::Edit { .. } => {}
        }
    }

    fn on_command(&mut self, command: &Command) {
        self.pending = match command {
            Command::Query(text) => {
                // FOUND_ROWS() belongs to the statement right after SQL_CALC_FOUND_ROWS.
                self.calc_found_rows = false;
                let statements = sql::statements(&text.text)
                    .iter()
                    .map(|t| sql::classify(t))
                    .collect();
                Pending::Query {
                    text: text.clone(),
                    statements,
                    results: Vec::new(),
                    changed: false,
                }
            }
            Command::Prepare(text) => Pending::Prepare(text.clone()),
            Command::InitDb(db) => Pending::InitDb(String::from_utf8_lossy(db).into_owned()),
            Command::Execute {
                id, param_types, ..
            }
            | Command::BulkExecute {
                id, param_types, ..
            } => {
                self.calc_found_rows = false;
                Pending::Execute {
                    id: *id,
                    param_types: param_types.clone(),
                    results: 0,
                    changed: false,
                }
            }
            Command::Close { id } => {
                self.prepared.remove(id);
                Pending::None
            }
            Command::ChangeUser => Pending::Reset {
                keep_database: false,
            },
            Command::ResetConnection => Pending::Reset {
                keep_database: true,
            },
            _ => Pending::Other { changed: false },
        };
    }

    fn on_trackers(&mut self, trackers: &[TrackItem]) {
        for item in trackers {
            match item {
                TrackItem::SystemVariable { name, value } => {
                    self.variables.insert(
                        String::from_utf8_lossy(name).into_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    );
                }
                TrackItem::Schema(db) => {
                    self.database = Some(String::from_utf8_lossy(db).into_owned());
                }
                TrackItem::StateChange(true) => match &mut self.pending {
                    Pending::Query { changed, .. }
                    | Pending::Execute { changed, .. }
                    | Pending::Other { changed } => *changed = true,
                    _ => {}
                },
                TrackItem::TransactionCharacteristics(c) if c.is_empty() => {
                    self.set_transaction = false;
                }
                _ => {}
            }
        }
    }

    fn on_response(&mut self, pending: Pending, outcome: Outcome) {
        let ok = outcome == Outcome::Ok;
        match pending {
            Pending::None => {}
            Pending::Query {
                text,
                statements,
                results,
                ..
            } => {
                if text.truncated && !results.is_empty() {
                    self.unclassified.insert(quote(&text.text));
                }
                // Results line up with statements only if no statement can return several.
                let first_opaque = statements.iter().position(|e| e.opaque);
                let aligned = |i: usize| first_opaque.is_none_or(|o| i < o);
                for (i, effects) in statements.iter().enumerate() {
                    // Without an error every statement ran; with one, those with a result did.
                    let succeeded = ok || (aligned(i) && i < results.len());
                    let maybe_ran = succeeded || !aligned(i);
                    if maybe_ran {
                        self.apply(effects, succeeded);
                    }
                }
                for (i, &changed) in results.iter().enumerate() {
                    if !changed {
                        continue;
                    }
                    let explained = match statements.get(i) {
                        Some(e) if aligned(i) => e.changes_state,
                        _ => false,
                    };
                    if !explained {
                        self.unexplained.insert(quote(&text.text));
                    }
                }
            }
            Pending::Prepare(_) => {}
            Pending::InitDb(db) => {
                if ok {
                    self.database = Some(db);
                }
            }
            Pending::Execute {
                id,
                param_types,
                changed,
                ..
            } => {
                let Some(stmt) = self.prepared.get_mut(&id) else {
                    return;
                };
                // The server keeps bound types even when the execution itself fails.
                if param_types.is_some() {
                    stmt.param_types = param_types;
                }
                let effects = stmt.effects.clone();
                let sql = stmt.sql.clone();
                if ok {
                    self.apply(&effects, true);
                }
                if changed && !effects.changes_state {
                    self.unexplained.insert(quote(&sql));
                }
            }
            // Done when its OK arrived (see `on_event`); an ERR changes nothing.
            Pending::Reset { .. } => {}
            // Other commands change nothing migration carries.
            Pending::Other { .. } => {}
        }
    }

    /// Forgets everything a fresh session does not have.
    fn reset(&mut self, keep_database: bool) {
        let database = self.database.take().filter(|_| keep_database);
        *self = SessionState {
            database,
            ..SessionState::default()
        };
    }

    /// Applies what a statement did; `certain` is false when it may or may not have run.
    fn apply(&mut self, e: &Effects, certain: bool) {
        // Acquiring: recorded even when unsure, because a needless block is safe.
        for t in &e.temp_created {
            self.temp_tables.insert(self.qualify(t));
        }
        for name in &e.locks_got {
            *self.named_locks.entry(name.clone()).or_default() += 1;
        }
        self.table_locks |= e.lock_tables;
        self.backup_lock |= e.backup_lock;
        self.xa |= e.xa_start;
        self.calc_found_rows |= e.calc_found_rows;
        self.user_variables.extend(e.user_vars.iter().cloned());
        let stales = !e.user_vars.is_empty() || e.sets_last_insert_id;
        if stales {
            let first = self.server_values_known();
            self.stale_by_set_only = e.is_set && (first || self.stale_by_set_only);
        }
        self.user_values_stale |= !e.user_vars.is_empty();
        self.last_insert_id_stale |= e.sets_last_insert_id;
        if !certain {
            if e.set_transaction {
                self.set_transaction = true;
            }
            return;
        }
        // Releasing: only when the statement surely ran.
        if e.transactional && !e.set_transaction {
            self.set_transaction = false;
        }
        if e.set_transaction {
            self.set_transaction = true;
        }
        if let Some(db) = &e.use_db {
            self.database = Some(db.clone());
        }
        match &e.names_collation {
            Some(Some(c)) => {
                self.variables
                    .insert("collation_connection".into(), c.clone());
            }
            // The character set's default: restoring `character_set_connection` gives it.
            Some(None) => {
                self.variables.remove("collation_connection");
            }
            None => {}
        }
        for t in &e.tables_dropped {
            let t = self.qualify(t);
            self.temp_tables.remove(&t);
        }
        for name in &e.locks_released {
            let key = Some(name.clone());
            if let Some(n) = self.named_locks.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.named_locks.remove(&key);
                }
            }
        }
        if e.release_all_locks {
            self.named_locks.clear();
        }
        if e.unlock_tables {
            self.table_locks = false;
        }
        if e.backup_unlock {
            self.backup_lock = false;
        }
        if e.xa_end {
            self.xa = false;
        }
        if let Some((name, source)) = &e.prepare {
            let sql = match source {
                PrepareSource::Text(s) => Some(s.clone()),
                PrepareSource::Variable(_) => None,
            };
            self.named.insert(
                name.clone(),
                NamedStatement {
                    name: name.clone(),
                    sql,
                    context: PrepareContext::of(self.database.as_deref(), &self.variables),
                },
            );
        }
        if let Some(name) = &e.deallocate {
            self.named.remove(name);
        }
    }

    fn qualify(&self, t: &TableName) -> TableName {
        TableName {
            schema: t.schema.clone().or_else(|| self.database.clone()),
            table: t.table.clone(),
        }
    }
}

/// The beginning of a statement, for a reason string.
fn quote(sql: &[u8]) -> String {
    let text = String::from_utf8_lossy(sql);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > QUOTE_LIMIT {
        let cut: String = text.chars().take(QUOTE_LIMIT).collect();
        format!("{cut}...")
    } else {
        text
    }
}
