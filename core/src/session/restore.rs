//! What ferry runs on a new backend connection so that it continues a
//! session exactly where the old one stood: pure functions from the session
//! state ferry kept to the statements that rebuild it.
//!
//! Order matters (LESSONS: "some variables must be set in a certain order"):
//! prepared statements first, each under the database, `sql_mode` and
//! character set it was prepared under; then the character set variables,
//! `sql_mode`, every other changed variable, the current database, user
//! variables, text `PREPARE`s and `LAST_INSERT_ID()`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::state::SessionState;

/// Variables that set the connection's character set, in the order that works.
const CHARSET_VARIABLES: [&str; 4] = [
    "character_set_client",
    "character_set_results",
    "character_set_connection",
    "collation_connection",
];

/// Variables never restored: ferry's own trackers, the database's character
/// set (follows `USE`), and values that belong to one server connection.
const NOT_RESTORED: [&str; 7] = [
    "character_set_database",
    "collation_database",
    "pseudo_thread_id",
    "last_insert_id",
    "insert_id",
    "warning_count",
    "error_count",
];

/// The server errors that mean "this variable cannot be set here": skipped and logged.
pub const SKIPPABLE_VARIABLE_ERRORS: [u16; 4] = [
    1193, // ER_UNKNOWN_SYSTEM_VARIABLE
    1238, // ER_INCORRECT_GLOBAL_LOCAL_VAR (read-only)
    1228, // ER_LOCAL_VARIABLE (global only)
    1227, // ER_SPECIFIC_ACCESS_DENIED_ERROR (needs SUPER)
];

/// `ER_BAD_DB_ERROR`: the database was dropped meanwhile.
pub const UNKNOWN_DATABASE: u16 = 1049;

/// Reads `LAST_INSERT_ID()` (sent with [`USER_VARIABLES_QUERY`]: `LAST_INSERT_ID(expr)` is in no OK packet).
pub const LAST_INSERT_ID_QUERY: &str = "SELECT LAST_INSERT_ID()";

/// Reads the names and types of the session's user variables (MariaDB 10.2+).
pub const USER_VARIABLES_QUERY: &str = "SELECT VARIABLE_NAME, VARIABLE_TYPE, CHARACTER_SET_NAME \
FROM information_schema.USER_VARIABLES ORDER BY VARIABLE_NAME";

/// The type of a user variable, as `information_schema.USER_VARIABLES` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserType {
    /// `INT`.
    Int,
    /// `INT UNSIGNED`.
    Unsigned,
    /// `DECIMAL`.
    Decimal,
    /// `DOUBLE`.
    Double,
    /// `VARCHAR` (any character set, `binary` included).
    String,
}

impl UserType {
    /// Parses `VARIABLE_TYPE`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_uppercase().as_str() {
            "INT" | "BIGINT" | "INTEGER" => UserType::Int,
            "INT UNSIGNED" | "BIGINT UNSIGNED" => UserType::Unsigned,
            "DECIMAL" => UserType::Decimal,
            "DOUBLE" | "REAL" => UserType::Double,
            "VARCHAR" | "STRING" | "CHAR" => UserType::String,
            _ => return None,
        })
    }
}

/// A user variable's value with everything needed to set it again exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserValue {
    /// SQL NULL of a type.
    Null(UserType),
    /// A number, as the server printed it.
    Number(UserType, String),
    /// A string: its bytes in hex, its character set and collation.
    String {
        /// Upper-case hex of the bytes.
        hex: String,
        /// Character set name (`binary` for binary strings).
        charset: String,
        /// Collation name.
        collation: String,
    },
}

/// One user variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserVariable {
    /// Its name, without `@`.
    pub name: String,
    /// Its value.
    pub value: UserValue,
}

/// What `USER_VARIABLES_QUERY` said of one variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserVariableType {
    /// Name.
    pub name: String,
    /// Type.
    pub ty: UserType,
    /// Character set.
    pub charset: String,
}

/// Reads the rows of [`USER_VARIABLES_QUERY`].
pub fn parse_user_variable_types(
    rows: &[Vec<Option<Vec<u8>>>],
) -> Result<Vec<UserVariableType>, String> {
    rows.iter()
        .map(|row| {
            let text = |i: usize| {
                row.get(i)
                    .cloned()
                    .flatten()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            };
            let name = text(0).ok_or("a user variable without a name")?;
            let ty = text(1).unwrap_or_default();
            let ty = UserType::parse(&ty)
                .ok_or_else(|| format!("user variable @{name} has an unknown type '{ty}'"))?;
            Ok(UserVariableType {
                name,
                ty,
                charset: text(2).unwrap_or_else(|| "binary".into()),
            })
        })
        .collect()
}

/// The query that reads the variables' values exactly: numbers as printed,
/// strings as hex with their collation. `None` when there are none.
pub fn user_values_query(types: &[UserVariableType]) -> Option<String> {
    if types.is_empty() {
        return None;
    }
    let mut sql = String::from("SELECT ");
    for (i, v) in types.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let var = user_var(&v.name);
        match v.ty {
            UserType::String => {
                let _ = write!(sql, "HEX({var}), COLLATION({var}), {var} IS NULL");
            }
            _ => sql.push_str(&var),
        }
    }
    Some(sql)
}

/// Combines the types with the one row of [`user_values_query`].
pub fn parse_user_values(
    types: &[UserVariableType],
    row: &[Option<Vec<u8>>],
) -> Result<Vec<UserVariable>, String> {
    let mut cells = row.iter();
    let mut next = || -> Result<Option<String>, String> {
        cells
            .next()
            .map(|c| c.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
            .ok_or_else(|| "fewer values than user variables".to_string())
    };
    let mut out = Vec::with_capacity(types.len());
    for t in types {
        let value = match t.ty {
            UserType::String => {
                let hex = next()?;
                let collation = next()?;
                let is_null = next()?;
                if is_null.as_deref() == Some("1") {
                    UserValue::Null(UserType::String)
                } else {
                    UserValue::String {
                        hex: hex.unwrap_or_default(),
                        charset: t.charset.clone(),
                        collation: collation.unwrap_or_else(|| "binary".into()),
                    }
                }
            }
            ty => match next()? {
                None => UserValue::Null(ty),
                Some(n) => UserValue::Number(ty, n),
            },
        };
        out.push(UserVariable {
            name: t.name.clone(),
            value,
        });
    }
    Ok(out)
}

/// A command ferry sends to rebuild the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A `COM_QUERY`; what an error means is `on_error`.
    Query {
        /// The statement (bytes: a text `PREPARE` carries the client's, in its character set).
        sql: Vec<u8>,
        /// What a server error means.
        on_error: OnError,
    },
    /// `COM_INIT_DB`.
    InitDb(String),
    /// `COM_STMT_PREPARE` of the client's statement `client_id`.
    Prepare {
        /// The id the client knows.
        client_id: u32,
        /// Its text.
        sql: Vec<u8>,
        /// Parameter count it must have.
        params: u16,
        /// Column count it must have.
        columns: u16,
    },
}

/// What a server error in reply to a [`Step::Query`] means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnError {
    /// The move is abandoned.
    Abort,
    /// Setting this system variable: skipped (and logged) if the server does not have it.
    Variable(String),
}

/// SQL string literal. Quotes are doubled, which works whatever `sql_mode`;
/// backslashes are doubled unless `NO_BACKSLASH_ESCAPES` is in force.
pub fn quote(s: &str, backslash_escapes: bool) -> String {
    String::from_utf8(quote_bytes(s.as_bytes(), backslash_escapes))
        .expect("only ASCII bytes are added next to ASCII bytes")
}

/// [`quote`] for bytes in any character set: only the bytes `'`, `\` and NUL change.
pub fn quote_bytes(s: &[u8], backslash_escapes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'\'');
    for &c in s {
        match c {
            b'\'' => out.extend_from_slice(b"''"),
            b'\\' if backslash_escapes => out.extend_from_slice(b"\\\\"),
            0 if backslash_escapes => out.extend_from_slice(b"\\0"),
            c => out.push(c),
        }
    }
    out.push(b'\'');
    out
}

/// `@`name``, with backticks doubled.
fn user_var(name: &str) -> String {
    format!("@`{}`", name.replace('`', "``"))
}

fn backslash_escapes(sql_mode: Option<&str>) -> bool {
    !sql_mode.is_some_and(|m| m.to_ascii_uppercase().contains("NO_BACKSLASH_ESCAPES"))
}

/// The literal that sets system variable `name` to `value` as the session tracker reported it.
pub fn variable_literal(name: &str, value: &str, backslash: bool) -> String {
    let numeric = !value.is_empty()
        && value.parse::<f64>().is_ok()
        && value
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'));
    if numeric {
        value.to_string()
    } else if value.is_empty() && name == "character_set_results" {
        // The tracker reports NULL as empty; NULL means "send results as they are".
        "NULL".to_string()
    } else {
        quote(value, backslash)
    }
}

/// `SET SESSION name = value`.
fn set_variable(name: &str, value: &str, backslash: bool) -> Step {
    Step::Query {
        sql: format!(
            "SET SESSION {} = {}",
            name,
            variable_literal(name, value, backslash)
        )
        .into_bytes(),
        on_error: OnError::Variable(name.to_string()),
    }
}

/// The literal for a user variable's value.
pub fn user_value_literal(value: &UserValue) -> String {
    match value {
        UserValue::Null(ty) => match ty {
            UserType::Int => "CAST(NULL AS SIGNED)".into(),
            UserType::Unsigned => "CAST(NULL AS UNSIGNED)".into(),
            UserType::Decimal => "CAST(NULL AS DECIMAL)".into(),
            UserType::Double => "CAST(NULL AS DOUBLE)".into(),
            UserType::String => "NULL".into(),
        },
        UserValue::Number(ty, n) => match ty {
            UserType::Int | UserType::Unsigned => n.clone(),
            UserType::Decimal if n.contains('.') => n.clone(),
            UserType::Decimal => format!("CAST({n} AS DECIMAL(65,0))"),
            UserType::Double if n.contains(['e', 'E']) => n.clone(),
            UserType::Double if n.parse::<f64>().is_ok_and(f64::is_finite) => format!("{n}e0"),
            UserType::Double => format!("CAST({} AS DOUBLE)", quote(n, false)),
            UserType::String => quote(n, false),
        },
        UserValue::String {
            hex,
            charset,
            collation,
        } => {
            let collate = if charset == "binary" {
                String::new()
            } else {
                format!(" COLLATE `{}`", collation.replace('`', "``"))
            };
            if hex.is_empty() {
                format!("CONVERT('' USING {charset}){collate}")
            } else {
                format!("_{charset} X'{hex}'{collate}")
            }
        }
    }
}

/// The context a statement was prepared under: what must be in force to prepare it again.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct PrepareContext {
    /// The current database.
    pub database: Option<String>,
    /// Changed variables among `sql_mode` and the character set ones (unchanged ones are the server's default).
    pub variables: BTreeMap<String, String>,
}

impl PrepareContext {
    /// The context of a session whose changed variables are `variables`.
    pub fn of(database: Option<&str>, variables: &BTreeMap<String, String>) -> Self {
        PrepareContext {
            database: database.map(str::to_string),
            variables: variables
                .iter()
                .filter(|(k, _)| {
                    k.as_str() == "sql_mode" || CHARSET_VARIABLES.contains(&k.as_str())
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// The order variables are set in: character set ones, `sql_mode`, then the rest by name.
fn variable_order(name: &str) -> (usize, &str) {
    match CHARSET_VARIABLES.iter().position(|v| *v == name) {
        Some(i) => (i, name),
        None if name == "sql_mode" => (CHARSET_VARIABLES.len(), name),
        None => (CHARSET_VARIABLES.len() + 1, name),
    }
}

fn restorable(name: &str) -> bool {
    !name.starts_with("session_track_") && !NOT_RESTORED.contains(&name)
}

/// Every step that rebuilds `state` (with user variables `user_vars`) on a
/// fresh connection. The statement the client prepared last (`last_prepared`)
/// is prepared last, so MariaDB's "last prepared" id means the same statement.
pub fn plan(
    state: &SessionState,
    user_vars: &[UserVariable],
    last_prepared: Option<u32>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    // Where the new connection stands while the plan runs.
    let mut db: Option<String> = None;
    let mut vars: BTreeMap<String, String> = BTreeMap::new();

    // Every statement under the context it was prepared in, grouped by context
    // (fewer switches); the binary statement prepared last goes last, so that
    // MariaDB's "last prepared" id names it.
    let mut prepared: Vec<_> = state.prepared().collect();
    prepared.sort_by_key(|p| (Some(p.id) == last_prepared, p.id));
    let named = state
        .named_prepared()
        .filter_map(|n| n.sql.as_ref().map(|sql| (n, sql)));
    let mut in_context: Vec<(bool, &PrepareContext, Step)> = Vec::new();
    for (n, text) in named {
        let ctx = &n.context;
        let backslash = backslash_escapes(ctx.variables.get("sql_mode").map(String::as_str));
        let mut sql = format!("PREPARE `{}` FROM ", n.name.replace('`', "``")).into_bytes();
        sql.extend(quote_bytes(text, backslash));
        let step = Step::Query {
            sql,
            on_error: OnError::Abort,
        };
        in_context.push((false, ctx, step));
    }
    for p in prepared {
        let step = Step::Prepare {
            client_id: p.id,
            sql: p.sql.clone(),
            params: p.params,
            columns: p.columns,
        };
        in_context.push((Some(p.id) == last_prepared, &p.context, step));
    }
    // The group that shares the last statement's context comes just before it.
    let last_ctx = in_context.iter().find(|i| i.0).map(|i| i.1.clone());
    in_context
        .sort_by_key(|(last, ctx, _)| (*last, Some(*ctx) == last_ctx.as_ref(), (*ctx).clone()));
    for (_, ctx, step) in in_context {
        // Without a final database the session cannot leave one behind: prepare without.
        if ctx.database.is_some() && state.database().is_some() && ctx.database != db {
            let want = ctx.database.clone().expect("checked");
            steps.push(Step::InitDb(want.clone()));
            db = Some(want);
        }
        set_context_variables(&mut steps, &mut vars, &ctx.variables);
        steps.push(step);
    }

    // Variables a prepare context set that the session does not have changed go back to default.
    let finals = state.variables();
    for name in vars.keys() {
        if !finals.contains_key(name) {
            steps.push(Step::Query {
                sql: format!("SET SESSION {name} = DEFAULT").into_bytes(),
                on_error: OnError::Variable(name.clone()),
            });
        }
    }
    let mut names: Vec<&String> = finals.keys().filter(|n| restorable(n)).collect();
    names.sort_by_key(|n| variable_order(n));
    let mut sql_mode: Option<&str> = None;
    for name in names {
        let value = &finals[name];
        if vars.get(name) != Some(value) {
            steps.push(set_variable(name, value, backslash_escapes(sql_mode)));
        }
        if name == "sql_mode" {
            sql_mode = Some(value);
        }
    }

    if let Some(want) = state.database().filter(|d| !d.is_empty()) {
        if db.as_deref() != Some(want) {
            steps.push(Step::InitDb(want.to_string()));
        }
    }
    if !user_vars.is_empty() {
        let mut sql = String::from("SET ");
        for (i, v) in user_vars.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            let _ = write!(
                sql,
                "{} = {}",
                user_var(&v.name),
                user_value_literal(&v.value)
            );
        }
        steps.push(Step::Query {
            sql: sql.into_bytes(),
            on_error: OnError::Abort,
        });
    }
    if state.last_insert_id() != 0 {
        steps.push(Step::Query {
            sql: format!("DO LAST_INSERT_ID({})", state.last_insert_id()).into_bytes(),
            on_error: OnError::Abort,
        });
    }
    steps
}

/// Sets the prepare-context variables that differ from what the connection has now.
fn set_context_variables(
    steps: &mut Vec<Step>,
    now: &mut BTreeMap<String, String>,
    want: &BTreeMap<String, String>,
) {
    let mut names: Vec<&String> = now.keys().chain(want.keys()).collect();
    names.sort_by_key(|n| variable_order(n));
    names.dedup();
    let mut sql_mode = now.get("sql_mode").cloned();
    let mut changes = Vec::new();
    for name in names {
        match (now.get(name), want.get(name)) {
            (a, Some(b)) if a != Some(b) => {
                changes.push(set_variable(
                    name,
                    b,
                    backslash_escapes(sql_mode.as_deref()),
                ));
                if name == "sql_mode" {
                    sql_mode = Some(b.clone());
                }
            }
            (Some(_), None) => changes.push(Step::Query {
                sql: format!("SET SESSION {name} = DEFAULT").into_bytes(),
                on_error: OnError::Variable(name.clone()),
            }),
            _ => {}
        }
    }
    steps.extend(changes);
    now.clone_from(want);
}
