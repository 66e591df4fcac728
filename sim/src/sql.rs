//! The small SQL dialect the simulated backend understands, and that the
//! scripted clients use to know what their own statements write.
//!
//! Statements are recognised by a table of leading keywords ([`RULES`]): to
//! support a new statement, add a row and a parse function.

use std::fmt;

/// A value: what a literal, a variable or a column holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A decimal number, kept as written.
    Dec(String),
    /// A floating-point number, as MariaDB prints it.
    Double(String),
    /// A string.
    Str(String),
}

impl Value {
    /// The text form a server sends in a text-protocol row (`None` for NULL).
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Int(i) => Some(i.to_string()),
            Value::Dec(d) | Value::Double(d) => Some(d.clone()),
            Value::Str(s) => Some(s.clone()),
        }
    }

    /// The type `information_schema.USER_VARIABLES` gives a variable holding this value.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "INT",
            Value::Dec(_) => "DECIMAL",
            Value::Double(_) => "DOUBLE",
            Value::Str(_) | Value::Null => "VARCHAR",
        }
    }

    /// The value as an integer, if it reads as one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Dec(d) | Value::Double(d) => d.parse::<f64>().ok().map(|f| f as i64),
            Value::Str(s) => s.trim().parse().ok(),
            Value::Null => None,
        }
    }

    /// The value as seconds (for `SLEEP`).
    pub fn as_secs(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Dec(d) | Value::Double(d) | Value::Str(d) => d.trim().parse().ok(),
            Value::Null => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.text() {
            None => f.write_str("NULL"),
            Some(t) => f.write_str(&t),
        }
    }
}

/// A lexical token, with its byte span in the statement.
#[derive(Clone, Debug, PartialEq)]
pub struct Tok {
    /// What it is.
    pub kind: Kind,
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// Token kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// A keyword or identifier (back-quoted ones too).
    Word(String),
    /// A number, as written.
    Num(String),
    /// A string literal's content.
    Str(String),
    /// A hex literal `X'..'`, decoded.
    Hex(Vec<u8>),
    /// `@name`.
    UserVar(String),
    /// `@@[session.|global.|local.]name`, lower-cased; the bool is "global".
    SysVar(String, bool),
    /// `?`.
    Param,
    /// `:=`.
    Assign,
    /// Any other punctuation.
    Punct(char),
}

/// Splits a statement into tokens.
pub fn tokenize(sql: &str) -> Result<Vec<Tok>, String> {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') || c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
            continue;
        }
        let kind = if c == b'\'' || c == b'"' {
            let mut s = Vec::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("unterminated string".into()),
                    Some(&q) if q == c => {
                        if b.get(i + 1) == Some(&c) {
                            s.push(c);
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        s.push(match b[i + 1] {
                            b'n' => b'\n',
                            b't' => b'\t',
                            b'0' => 0,
                            other => other,
                        });
                        i += 2;
                    }
                    Some(&x) => {
                        s.push(x);
                        i += 1;
                    }
                }
            }
            Kind::Str(String::from_utf8_lossy(&s).into_owned())
        } else if c == b'`' {
            i += 1;
            let s = i;
            while i < b.len() && b[i] != b'`' {
                i += 1;
            }
            let w = sql[s..i].to_string();
            i += 1;
            Kind::Word(w)
        } else if c == b'@' {
            if b.get(i + 1) == Some(&b'@') {
                i += 2;
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.')
                {
                    i += 1;
                }
                let name = sql[s..i].to_ascii_lowercase();
                let (global, name) = match name.split_once('.') {
                    Some(("global", n)) => (true, n.to_string()),
                    Some((_, n)) => (false, n.to_string()),
                    None => (false, name),
                };
                Kind::SysVar(name, global)
            } else {
                i += 1;
                let name = if b.get(i) == Some(&b'`') || b.get(i) == Some(&b'\'') {
                    let q = b[i];
                    i += 1;
                    let s = i;
                    while i < b.len() && b[i] != q {
                        i += 1;
                    }
                    let n = sql[s..i].to_string();
                    i += 1;
                    n
                } else {
                    let s = i;
                    while i < b.len()
                        && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$')
                    {
                        i += 1;
                    }
                    sql[s..i].to_string()
                };
                Kind::UserVar(name.to_ascii_lowercase())
            }
        } else if (c == b'x' || c == b'X') && b.get(i + 1) == Some(&b'\'') {
            i += 2;
            let s = i;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            let hex = &sql[s..i];
            i += 1;
            let bytes = (0..hex.len() / 2)
                .map(|k| u8::from_str_radix(&hex[2 * k..2 * k + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| "bad hex literal".to_string())?;
            Kind::Hex(bytes)
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                let mut j = i + 1;
                if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                    j += 1;
                }
                if j < b.len() && b[j].is_ascii_digit() {
                    i = j;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            Kind::Num(sql[start..i].to_string())
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            Kind::Word(sql[start..i].to_string())
        } else if c == b'?' {
            i += 1;
            Kind::Param
        } else if c == b':' && b.get(i + 1) == Some(&b'=') {
            i += 2;
            Kind::Assign
        } else {
            i += 1;
            Kind::Punct(c as char)
        };
        out.push(Tok {
            kind,
            start,
            end: i,
        });
    }
    Ok(out)
}

/// An expression: the few forms the dialect has.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A literal.
    Lit(Value),
    /// The n-th `?` (0-based).
    Param(usize),
    /// `@name`.
    UserVar(String),
    /// `@@name`.
    SysVar(String),
    /// `NAME(args)`, name upper-cased.
    Func(String, Vec<Expr>),
    /// A column (`k`, `v`, `seq`, ...) or `*`.
    Column(String),
    /// `-expr`.
    Neg(Box<Expr>),
    /// `CAST(expr AS type)`, type upper-cased without its size.
    Cast(Box<Expr>, String),
    /// `expr IS [NOT] NULL` (true: NOT).
    IsNull(Box<Expr>, bool),
}

/// One item of a SELECT list.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// The expression.
    pub expr: Expr,
    /// The column name (its alias, or its text).
    pub name: String,
}

/// What a SELECT reads from.
#[derive(Clone, Debug, PartialEq)]
pub enum From {
    /// A key-value table, optionally one key.
    Table {
        /// Table name.
        table: String,
        /// `WHERE k = expr`.
        key: Option<Expr>,
    },
    /// MariaDB's sequence engine: `seq_1_to_N`.
    Seq(u64),
    /// `information_schema.USER_VARIABLES`.
    UserVariables,
}

/// What `SET` assigns to.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A system variable (lower-case name).
    Sys(String),
    /// A user variable (lower-case name).
    User(String),
    /// `SET NAMES charset [COLLATE collation]`.
    Names(Option<String>),
}

/// A statement of the dialect.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// BEGIN / START TRANSACTION.
    Begin,
    /// COMMIT.
    Commit,
    /// ROLLBACK.
    Rollback,
    /// SET a = x, ...
    Set(Vec<(Target, Expr)>),
    /// SELECT items [FROM ...].
    Select(Vec<Item>, Option<From>),
    /// USE db.
    Use(String),
    /// INSERT INTO t (k, v) VALUES (x, y) (k may be left out: auto-increment).
    Insert {
        /// Table.
        table: String,
        /// The key, if given.
        key: Option<Expr>,
        /// The value.
        value: Expr,
    },
    /// UPDATE t SET v = x WHERE k = y.
    Update {
        /// Table.
        table: String,
        /// New value.
        value: Expr,
        /// Key.
        key: Expr,
    },
    /// DELETE FROM t WHERE k = y.
    Delete {
        /// Table.
        table: String,
        /// Key.
        key: Expr,
    },
    /// DO expr, ...
    Do(Vec<Expr>),
    /// CREATE [TEMPORARY] TABLE name ...
    CreateTable {
        /// Name.
        table: String,
        /// TEMPORARY.
        temporary: bool,
    },
    /// DROP [TEMPORARY] TABLE name.
    DropTable {
        /// Name.
        table: String,
        /// TEMPORARY.
        temporary: bool,
    },
    /// KILL [QUERY | CONNECTION] id.
    Kill {
        /// QUERY only.
        query: bool,
        /// The thread id.
        id: Expr,
    },
}

/// A parse function for the statements a row of [`RULES`] starts.
type Rule = fn(&mut Parser) -> Result<Stmt, String>;

/// Leading keywords → parser. The first row whose keywords match wins.
pub const RULES: &[(&str, Rule)] = &[
    ("BEGIN", |_| Ok(Stmt::Begin)),
    ("START TRANSACTION", |_| Ok(Stmt::Begin)),
    ("COMMIT", |_| Ok(Stmt::Commit)),
    ("ROLLBACK", |_| Ok(Stmt::Rollback)),
    ("SET NAMES", set_names),
    ("SET", set),
    ("SELECT", select),
    ("USE", |p| Ok(Stmt::Use(p.ident()?))),
    ("INSERT INTO", insert),
    ("UPDATE", update),
    ("DELETE FROM", delete),
    ("DO", |p| Ok(Stmt::Do(p.list(Parser::expr)?))),
    ("CREATE TEMPORARY TABLE", |p| create(p, true)),
    ("CREATE TABLE", |p| create(p, false)),
    ("DROP TEMPORARY TABLE", |p| drop_table(p, true)),
    ("DROP TABLE", |p| drop_table(p, false)),
    ("KILL QUERY", |p| kill(p, true)),
    ("KILL CONNECTION", |p| kill(p, false)),
    ("KILL", |p| kill(p, false)),
];

/// Parses one statement (a trailing `;` is allowed).
pub fn parse(sql: &str) -> Result<Stmt, String> {
    let mut toks = tokenize(sql)?;
    while toks.last().is_some_and(|t| t.kind == Kind::Punct(';')) {
        toks.pop();
    }
    for (keywords, rule) in RULES {
        let mut p = Parser {
            sql,
            toks: &toks,
            at: 0,
            params: 0,
        };
        if keywords.split(' ').all(|k| p.eat(k)) {
            let stmt = rule(&mut p)?;
            if p.at < toks.len() {
                return Err(p.near());
            }
            return Ok(stmt);
        }
    }
    Err(Parser {
        sql,
        toks: &toks,
        at: 0,
        params: 0,
    }
    .near())
}

/// The number of `?` placeholders in a statement.
pub fn count_params(sql: &str) -> usize {
    tokenize(sql)
        .map(|t| t.iter().filter(|t| t.kind == Kind::Param).count())
        .unwrap_or(0)
}

/// A cursor over tokens.
pub struct Parser<'a> {
    sql: &'a str,
    toks: &'a [Tok],
    at: usize,
    params: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Kind> {
        self.toks.get(self.at).map(|t| &t.kind)
    }

    fn is(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Kind::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn eat(&mut self, kw: &str) -> bool {
        let yes = self.is(kw);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn eat_punct(&mut self, c: char) -> bool {
        let yes = self.peek() == Some(&Kind::Punct(c));
        if yes {
            self.at += 1;
        }
        yes
    }

    fn expect_punct(&mut self, c: char) -> Result<(), String> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            Err(self.near())
        }
    }

    fn expect(&mut self, kw: &str) -> Result<(), String> {
        if self.eat(kw) {
            Ok(())
        } else {
            Err(self.near())
        }
    }

    /// The syntax error for the current position.
    fn near(&self) -> String {
        let rest = match self.toks.get(self.at) {
            Some(t) => &self.sql[t.start..],
            None => "",
        };
        format!("You have an error in your SQL syntax; check the manual that corresponds to your MariaDB server version for the right syntax to use near '{rest}' at line 1")
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Kind::Word(w)) => {
                let mut name = w.clone();
                self.at += 1;
                if self.eat_punct('.') {
                    name.push('.');
                    name.push_str(&self.ident()?);
                }
                Ok(name)
            }
            _ => Err(self.near()),
        }
    }

    fn list<T>(&mut self, f: fn(&mut Self) -> Result<T, String>) -> Result<Vec<T>, String> {
        let mut out = vec![f(self)?];
        while self.eat_punct(',') {
            out.push(f(self)?);
        }
        Ok(out)
    }

    /// One expression: a primary, then `COLLATE x` (ignored) and `IS [NOT] NULL`.
    pub fn expr(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat("COLLATE") {
                self.ident()?;
            } else if self.is("IS") {
                self.at += 1;
                let not = self.eat("NOT");
                self.expect("NULL")?;
                e = Expr::IsNull(Box::new(e), not);
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let Some(tok) = self.toks.get(self.at) else {
            return Err(self.near());
        };
        self.at += 1;
        Ok(match &tok.kind {
            Kind::Num(n) if n.contains(['e', 'E']) => Expr::Lit(Value::Double(
                n.parse::<f64>().map_or(n.clone(), |f| f.to_string()),
            )),
            Kind::Num(n) => match n.parse::<i64>() {
                Ok(i) => Expr::Lit(Value::Int(i)),
                Err(_) => Expr::Lit(Value::Dec(n.clone())),
            },
            Kind::Str(s) => Expr::Lit(Value::Str(s.clone())),
            Kind::Hex(h) => Expr::Lit(Value::Str(String::from_utf8_lossy(h).into_owned())),
            // A character set introducer: `_utf8mb4 'x'`, `_latin1 X'41'`.
            Kind::Word(w)
                if w.starts_with('_')
                    && matches!(
                        self.toks.get(self.at).map(|t| &t.kind),
                        Some(Kind::Str(_) | Kind::Hex(_))
                    ) =>
            {
                self.primary()?
            }
            Kind::Word(w)
                if (w.eq_ignore_ascii_case("CAST") || w.eq_ignore_ascii_case("CONVERT"))
                    && self.peek() == Some(&Kind::Punct('(')) =>
            {
                self.at += 1;
                let inner = self.expr()?;
                let out = if self.eat("AS") {
                    let ty = self.ident()?.to_ascii_uppercase();
                    if self.eat_punct('(') {
                        while !self.eat_punct(')') {
                            if self.at >= self.toks.len() {
                                return Err(self.near());
                            }
                            self.at += 1;
                        }
                    }
                    Expr::Cast(Box::new(inner), ty)
                } else if self.eat("USING") || self.eat_punct(',') {
                    self.ident()?;
                    inner
                } else {
                    return Err(self.near());
                };
                self.expect_punct(')')?;
                out
            }
            Kind::UserVar(u) => Expr::UserVar(u.clone()),
            Kind::SysVar(s, _) => Expr::SysVar(s.clone()),
            Kind::Param => {
                self.params += 1;
                Expr::Param(self.params - 1)
            }
            Kind::Punct('-') => Expr::Neg(Box::new(self.expr()?)),
            Kind::Punct('*') => Expr::Column("*".into()),
            Kind::Word(w) if w.eq_ignore_ascii_case("NULL") => Expr::Lit(Value::Null),
            Kind::Word(w) if w.eq_ignore_ascii_case("TRUE") => Expr::Lit(Value::Int(1)),
            Kind::Word(w) if w.eq_ignore_ascii_case("FALSE") => Expr::Lit(Value::Int(0)),
            Kind::Word(w) => {
                if self.eat_punct('(') {
                    let name = w.to_ascii_uppercase();
                    let args = if self.eat_punct(')') {
                        Vec::new()
                    } else {
                        let a = self.list(Parser::expr)?;
                        self.expect_punct(')')?;
                        a
                    };
                    Expr::Func(name, args)
                } else {
                    // A bare word: a column, or a value like ON / utf8mb4 in SET.
                    Expr::Column(w.clone())
                }
            }
            _ => {
                self.at -= 1;
                return Err(self.near());
            }
        })
    }

    fn item(&mut self) -> Result<Item, String> {
        let start = self.toks.get(self.at).map_or(0, |t| t.start);
        let expr = self.expr()?;
        let end = self.toks[self.at - 1].end;
        let mut name = self.sql[start..end].to_string();
        if self.eat("AS") {
            name = match self.peek() {
                Some(Kind::Str(s)) => {
                    let s = s.clone();
                    self.at += 1;
                    s
                }
                _ => self.ident()?,
            };
        } else if let Some(Kind::Word(w)) = self.peek() {
            if !w.eq_ignore_ascii_case("FROM") {
                name = self.ident()?;
            }
        }
        Ok(Item { expr, name })
    }

    fn key_condition(&mut self) -> Result<Expr, String> {
        self.expect("WHERE")?;
        let col = self.ident()?;
        if !col.eq_ignore_ascii_case("k") {
            return Err(format!("Unknown column '{col}' in 'where clause'"));
        }
        self.expect_punct('=')?;
        self.expr()
    }
}

fn set_names(p: &mut Parser) -> Result<Stmt, String> {
    let charset = match p.primary()? {
        Expr::Column(w) => Expr::Lit(Value::Str(w)),
        e => e,
    };
    let collation = if p.eat("COLLATE") {
        Some(match p.expr()? {
            Expr::Column(w) | Expr::Lit(Value::Str(w)) => w,
            _ => return Err(p.near()),
        })
    } else {
        None
    };
    Ok(Stmt::Set(vec![(Target::Names(collation), charset)]))
}

fn set(p: &mut Parser) -> Result<Stmt, String> {
    let assigns = p.list(|p| {
        let target = match p.peek().cloned() {
            Some(Kind::UserVar(u)) => {
                p.at += 1;
                Target::User(u)
            }
            Some(Kind::SysVar(s, _)) => {
                p.at += 1;
                Target::Sys(s)
            }
            Some(Kind::Word(_)) => {
                if !(p.eat("SESSION") || p.eat("LOCAL")) {
                    p.eat("GLOBAL");
                }
                match p.peek().cloned() {
                    Some(Kind::SysVar(s, _)) => {
                        p.at += 1;
                        Target::Sys(s)
                    }
                    _ => Target::Sys(p.ident()?.to_ascii_lowercase()),
                }
            }
            _ => return Err(p.near()),
        };
        if !(p.eat_punct('=') || p.peek() == Some(&Kind::Assign)) {
            return Err(p.near());
        }
        if p.peek() == Some(&Kind::Assign) {
            p.at += 1;
        }
        let value = match p.expr()? {
            // SET x = ON / DEFAULT / utf8mb4: a bare word is a string value.
            Expr::Column(w) => Expr::Lit(Value::Str(w)),
            e => e,
        };
        Ok((target, value))
    })?;
    Ok(Stmt::Set(assigns))
}

fn select(p: &mut Parser) -> Result<Stmt, String> {
    let items = p.list(Parser::item)?;
    if !p.eat("FROM") {
        return Ok(Stmt::Select(items, None));
    }
    let table = p.ident()?;
    let lower = table.to_ascii_lowercase();
    let from = if lower == "information_schema.user_variables" {
        if p.eat("ORDER") {
            p.expect("BY")?;
            p.list(Parser::ident)?;
        }
        From::UserVariables
    } else if let Some(n) = lower
        .strip_prefix("seq_1_to_")
        .and_then(|n| n.parse::<u64>().ok())
    {
        From::Seq(n)
    } else {
        let key = if p.is("WHERE") {
            Some(p.key_condition()?)
        } else {
            None
        };
        From::Table { table, key }
    };
    Ok(Stmt::Select(items, Some(from)))
}

fn insert(p: &mut Parser) -> Result<Stmt, String> {
    let table = p.ident()?;
    p.expect_punct('(')?;
    let cols = p.list(Parser::ident)?;
    p.expect_punct(')')?;
    if !(p.eat("VALUES") || p.eat("VALUE")) {
        return Err(p.near());
    }
    p.expect_punct('(')?;
    let vals = p.list(Parser::expr)?;
    p.expect_punct(')')?;
    if cols.len() != vals.len() {
        return Err("Column count doesn't match value count at row 1".into());
    }
    let mut key = None;
    let mut value = Expr::Lit(Value::Null);
    for (c, v) in cols.iter().zip(vals) {
        match c.to_ascii_lowercase().as_str() {
            "k" => key = Some(v),
            "v" => value = v,
            other => return Err(format!("Unknown column '{other}' in 'field list'")),
        }
    }
    Ok(Stmt::Insert { table, key, value })
}

fn update(p: &mut Parser) -> Result<Stmt, String> {
    let table = p.ident()?;
    p.expect("SET")?;
    let col = p.ident()?;
    if !col.eq_ignore_ascii_case("v") {
        return Err(format!("Unknown column '{col}' in 'field list'"));
    }
    p.expect_punct('=')?;
    let value = p.expr()?;
    let key = p.key_condition()?;
    Ok(Stmt::Update { table, value, key })
}

fn delete(p: &mut Parser) -> Result<Stmt, String> {
    let table = p.ident()?;
    let key = p.key_condition()?;
    Ok(Stmt::Delete { table, key })
}

fn create(p: &mut Parser, temporary: bool) -> Result<Stmt, String> {
    p.eat("IF");
    p.eat("NOT");
    p.eat("EXISTS");
    let table = p.ident()?;
    // Column definitions are accepted and ignored: every table is (k, v).
    p.at = p.toks.len();
    Ok(Stmt::CreateTable { table, temporary })
}

fn drop_table(p: &mut Parser, temporary: bool) -> Result<Stmt, String> {
    p.eat("IF");
    p.eat("EXISTS");
    let table = p.ident()?;
    Ok(Stmt::DropTable { table, temporary })
}

fn kill(p: &mut Parser, query: bool) -> Result<Stmt, String> {
    Ok(Stmt::Kill {
        query,
        id: p.expr()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_dialect() {
        assert_eq!(parse("begin").unwrap(), Stmt::Begin);
        assert_eq!(parse("START TRANSACTION;").unwrap(), Stmt::Begin);
        let s = parse(ferry_core::login::backend::TRACKER_SETUP).unwrap();
        let Stmt::Set(a) = s else { panic!() };
        assert_eq!(a.len(), 4);
        assert_eq!(
            a[3],
            (
                Target::Sys("session_track_transaction_info".into()),
                Expr::Lit(Value::Str("STATE".into()))
            )
        );
        let Stmt::Select(items, None) = parse(ferry_core::client_trackers::SETTINGS_QUERY).unwrap()
        else {
            panic!()
        };
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].name, "@@session_track_system_variables");
        assert_eq!(
            parse("INSERT INTO t (k, v) VALUES (1, 'a')").unwrap(),
            Stmt::Insert {
                table: "t".into(),
                key: Some(Expr::Lit(Value::Int(1))),
                value: Expr::Lit(Value::Str("a".into()))
            }
        );
        assert_eq!(
            parse("UPDATE t SET v = ? WHERE k = ?").unwrap(),
            Stmt::Update {
                table: "t".into(),
                value: Expr::Param(0),
                key: Expr::Param(1)
            }
        );
        assert!(matches!(
            parse("SELECT v FROM t WHERE k = 1").unwrap(),
            Stmt::Select(_, Some(From::Table { .. }))
        ));
        assert!(matches!(
            parse("select seq from seq_1_to_1000").unwrap(),
            Stmt::Select(_, Some(From::Seq(1000)))
        ));
        assert!(matches!(
            parse("SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.USER_VARIABLES ORDER BY VARIABLE_NAME").unwrap(),
            Stmt::Select(_, Some(From::UserVariables))
        ));
        assert_eq!(
            parse("SET @u := 5, SESSION sql_mode = 'ANSI', @@time_zone = '+00:00'").unwrap(),
            Stmt::Set(vec![
                (Target::User("u".into()), Expr::Lit(Value::Int(5))),
                (
                    Target::Sys("sql_mode".into()),
                    Expr::Lit(Value::Str("ANSI".into()))
                ),
                (
                    Target::Sys("time_zone".into()),
                    Expr::Lit(Value::Str("+00:00".into()))
                ),
            ])
        );
        assert_eq!(
            parse("SET NAMES latin1 COLLATE latin1_bin").unwrap(),
            Stmt::Set(vec![(
                Target::Names(Some("latin1_bin".into())),
                Expr::Lit(Value::Str("latin1".into()))
            )])
        );
        assert_eq!(
            parse("KILL QUERY 12").unwrap(),
            Stmt::Kill {
                query: true,
                id: Expr::Lit(Value::Int(12))
            }
        );
        assert!(parse("SELEKT 1").unwrap_err().contains("near 'SELEKT 1'"));
        assert_eq!(count_params("SELECT v FROM t WHERE k = ? -- ?"), 1);
        let Stmt::Select(items, None) = parse("SELECT CONNECTION_ID() AS id, 'x' y").unwrap()
        else {
            panic!()
        };
        assert_eq!(items[0].name, "id");
        assert_eq!(items[1].name, "y");
    }
}
