//! The list `search` language (reference §2.5), compiled to parameterised SQL.
//!
//! ```text
//! expr       := and ( "or" and )*
//! and        := unary ( "and" unary )*
//! unary      := "not" unary | "(" expr ")" | comparison
//! comparison := field op value | field ["not"] "in" list
//! op         := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">="
//! list       := ( "(" | "[" ) value ( "," value )* ( ")" | "]" )
//! value      := 'string' ('' escapes a quote) | number | true | false | bare word
//! field      := column | labels.<key> | spec.<a>[.<b>…] | status.conditions.<Type>[.<sub>]
//! ```
//!
//! Keywords are case-insensitive. Every value becomes a bind parameter; the SQL text only ever
//! contains fixed fragments, column names from an allowlist and `$n` placeholders. Field paths
//! (label keys, spec segments, condition types) are bound as parameters too.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Longest accepted query, in characters.
pub const MAX_LEN: usize = 4096;
/// Deepest accepted nesting of parentheses and `not`.
const MAX_DEPTH: usize = 32;
/// Most bind parameters one query may produce.
const MAX_PARAMS: usize = 1000;

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    Int(i64),
    /// A decimal number, bound as text and cast to `numeric` in SQL.
    Numeric(String),
    Bool(bool),
    Time(DateTime<Utc>),
    Uuid(Uuid),
    Path(Vec<String>),
}

impl Param {
    /// Appends this value to a statement's arguments.
    pub fn add_to(&self, args: &mut sqlx::postgres::PgArguments) -> Result<(), sqlx::error::BoxDynError> {
        use sqlx::Arguments;
        match self {
            Param::Text(s) | Param::Numeric(s) => args.add(s.clone()),
            Param::Int(n) => args.add(*n),
            Param::Bool(b) => args.add(*b),
            Param::Time(t) => args.add(*t),
            Param::Uuid(u) => args.add(*u),
            Param::Path(p) => args.add(p.clone()),
        }
    }
}

/// A compiled filter: a boolean SQL expression and its parameters, numbered from the `first`
/// placeholder given to [`compile`].
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub sql: String,
    pub params: Vec<Param>,
}

/// Why a query was rejected; the text is meant for the client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SearchError(pub String);

fn fail<T>(msg: impl Into<String>) -> Result<T, SearchError> {
    Err(SearchError(msg.into()))
}

/// Scalar columns of `resources` that search and `order` may name, with their types.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColumnType {
    Uuid,
    Text,
    Int,
    Time,
}

pub const COLUMNS: &[(&str, ColumnType)] = &[
    ("id", ColumnType::Uuid),
    ("kind", ColumnType::Text),
    ("name", ColumnType::Text),
    ("owner_id", ColumnType::Uuid),
    ("generation", ColumnType::Int),
    ("created_time", ColumnType::Time),
    ("updated_time", ColumnType::Time),
    ("created_by", ColumnType::Text),
    ("updated_by", ColumnType::Text),
    ("deleted_time", ColumnType::Time),
    ("deleted_by", ColumnType::Text),
];

/// The column named `name`, as the static string used in SQL.
pub fn column(name: &str) -> Option<(&'static str, ColumnType)> {
    COLUMNS.iter().find(|(c, _)| *c == name).copied()
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(String),
    Op(&'static str),
    Open,
    Close,
    Comma,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    at: usize,
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Word(w) => format!("'{w}'"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Num(n) => format!("number {n}"),
        Tok::Op(op) => format!("'{op}'"),
        Tok::Open => "'('".into(),
        Tok::Close => "')'".into(),
        Tok::Comma => "','".into(),
    }
}

fn lex(input: &str) -> Result<Vec<Token>, SearchError> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i + 1;
        match c {
            c if c.is_whitespace() => i += 1,
            '(' | '[' => {
                out.push(Token { tok: Tok::Open, at });
                i += 1;
            }
            ')' | ']' => {
                out.push(Token { tok: Tok::Close, at });
                i += 1;
            }
            ',' => {
                out.push(Token { tok: Tok::Comma, at });
                i += 1;
            }
            '=' => {
                out.push(Token { tok: Tok::Op("="), at });
                i += 1;
            }
            '!' | '<' | '>' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('!', Some('=')) => ("!=", 2),
                    ('<', Some('>')) => ("!=", 2),
                    ('<', Some('=')) => ("<=", 2),
                    ('>', Some('=')) => (">=", 2),
                    ('<', _) => ("<", 1),
                    ('>', _) => (">", 1),
                    _ => return fail(format!("unexpected character '!' at position {at}")),
                };
                out.push(Token { tok: Tok::Op(op), at });
                i += len;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return fail(format!("unterminated string starting at position {at}")),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some('\0') => {
                            return fail(format!("string starting at position {at} contains a NUL character"));
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Token { tok: Tok::Str(s), at });
            }
            c if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(|c| c.is_ascii_digit() || *c == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                if text.parse::<f64>().is_err() || text.ends_with('.') {
                    return fail(format!("invalid number '{text}' at position {at}"));
                }
                out.push(Token { tok: Tok::Num(text), at });
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while chars.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')) {
                    i += 1;
                }
                out.push(Token { tok: Tok::Word(chars[start..i].iter().collect()), at });
            }
            other => {
                return fail(format!("unexpected character '{}' at position {at}", other.escape_default()));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Parser

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Num(String),
    Bool(bool),
    Word(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp { field: String, at: usize, op: &'static str, value: Value },
    In { field: String, at: usize, negated: bool, values: Vec<Value> },
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    end: usize,
}

fn is_keyword(tok: &Tok, kw: &str) -> bool {
    matches!(tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self, wanted: &str) -> Result<Token, SearchError> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t.ok_or_else(|| SearchError(format!("unexpected end of query at position {}: expected {wanted}", self.end)))
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        if self.peek().is_some_and(|t| is_keyword(&t.tok, kw)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Result<(), SearchError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH { fail(format!("query nests deeper than {MAX_DEPTH} levels")) } else { Ok(()) }
    }

    fn expr(&mut self) -> Result<Expr, SearchError> {
        let mut left = self.and()?;
        while self.eat_keyword("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, SearchError> {
        let mut left = self.unary()?;
        while self.eat_keyword("and") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, SearchError> {
        self.enter()?;
        let expr = if self.eat_keyword("not") {
            Expr::Not(Box::new(self.unary()?))
        } else if self.peek().is_some_and(|t| t.tok == Tok::Open) {
            self.pos += 1;
            let inner = self.expr()?;
            let close = self.next("')'")?;
            if close.tok != Tok::Close {
                return fail(format!("expected ')' at position {} but found {}", close.at, describe(&close.tok)));
            }
            inner
        } else {
            self.comparison()?
        };
        self.depth -= 1;
        Ok(expr)
    }

    fn comparison(&mut self) -> Result<Expr, SearchError> {
        let t = self.next("a field name")?;
        let field = match t.tok {
            Tok::Word(w) if !["and", "or", "not", "in"].iter().any(|k| w.eq_ignore_ascii_case(k)) => w,
            other => return fail(format!("expected a field name at position {} but found {}", t.at, describe(&other))),
        };
        let op = self.next("an operator")?;
        let negated = is_keyword(&op.tok, "not");
        if negated || is_keyword(&op.tok, "in") {
            if negated && !self.eat_keyword("in") {
                return fail(format!("expected 'in' after 'not' at position {}", op.at));
            }
            let values = self.list()?;
            return Ok(Expr::In { field, at: t.at, negated, values });
        }
        let Tok::Op(op_str) = op.tok else {
            return fail(format!(
                "expected an operator after '{field}' at position {} but found {}",
                op.at,
                describe(&op.tok)
            ));
        };
        let value = self.value()?;
        Ok(Expr::Cmp { field, at: t.at, op: op_str, value })
    }

    fn list(&mut self) -> Result<Vec<Value>, SearchError> {
        let open = self.next("'(' or '['")?;
        if open.tok != Tok::Open {
            return fail(format!("expected a list after 'in' at position {}", open.at));
        }
        let mut values = vec![self.value()?];
        loop {
            let t = self.next("',' or ')'")?;
            match t.tok {
                Tok::Comma => values.push(self.value()?),
                Tok::Close => return Ok(values),
                other => {
                    return fail(format!("expected ',' or ')' at position {} but found {}", t.at, describe(&other)));
                }
            }
        }
    }

    fn value(&mut self) -> Result<Value, SearchError> {
        let t = self.next("a value")?;
        Ok(match t.tok {
            Tok::Str(s) => Value::Str(s),
            Tok::Num(n) => Value::Num(n),
            Tok::Word(w) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Tok::Word(w) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            Tok::Word(w) => Value::Word(w),
            other => return fail(format!("expected a value at position {} but found {}", t.at, describe(&other))),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Compiler

enum Field {
    Column(&'static str, ColumnType),
    Label(String),
    Spec(Vec<String>),
    Condition(String),
    ConditionTime(String, &'static str),
    ConditionGeneration(String),
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn condition_type_ok(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn resolve(name: &str) -> Result<Field, SearchError> {
    if let Some((col, ty)) = column(name) {
        return Ok(Field::Column(col, ty));
    }
    if let Some(key) = name.strip_prefix("labels.") {
        if key.is_empty() || key.len() > 317 {
            return fail(format!("invalid label key in '{name}'"));
        }
        return Ok(Field::Label(key.to_string()));
    }
    if let Some(path) = name.strip_prefix("spec.") {
        let segments: Vec<String> = path.split('.').map(str::to_string).collect();
        if !segments.iter().all(|s| segment_ok(s)) {
            return fail(format!("invalid spec path '{name}': segments are letters, digits and '_'"));
        }
        return Ok(Field::Spec(segments));
    }
    if let Some(rest) = name.strip_prefix("status.conditions.") {
        let (ty, sub) = rest.split_once('.').map_or((rest, None), |(t, s)| (t, Some(s)));
        if !condition_type_ok(ty) {
            return fail(format!("invalid condition type '{ty}': expected PascalCase such as Reconciled"));
        }
        return match sub {
            None => Ok(Field::Condition(ty.into())),
            Some("last_updated_time") => Ok(Field::ConditionTime(ty.into(), "last_updated_time")),
            Some("last_transition_time") => Ok(Field::ConditionTime(ty.into(), "last_transition_time")),
            Some("observed_generation") => Ok(Field::ConditionGeneration(ty.into())),
            Some(other) => fail(format!(
                "invalid condition field '{other}': expected last_updated_time, last_transition_time or observed_generation"
            )),
        };
    }
    fail(format!("invalid field in search query: '{name}'"))
}

struct Compiler {
    sql: String,
    params: Vec<Param>,
    first: usize,
}

impl Compiler {
    fn bind(&mut self, p: Param) -> Result<String, SearchError> {
        if self.params.len() >= MAX_PARAMS {
            return fail(format!("query has more than {MAX_PARAMS} values"));
        }
        self.params.push(p);
        Ok(format!("${}", self.first + self.params.len() - 1))
    }

    fn expr(&mut self, e: &Expr, negated: bool) -> Result<(), SearchError> {
        match e {
            Expr::And(a, b) | Expr::Or(a, b) => {
                self.sql.push('(');
                self.expr(a, negated)?;
                self.sql.push_str(if matches!(e, Expr::And(..)) { " and " } else { " or " });
                self.expr(b, negated)?;
                self.sql.push(')');
            }
            Expr::Not(inner) => {
                self.sql.push_str("(not ");
                self.expr(inner, true)?;
                self.sql.push(')');
            }
            Expr::Cmp { field, at, op, value } => self.cmp(field, *at, op, value, negated)?,
            Expr::In { field, at, negated: not_in, values } => self.in_list(field, *at, *not_in, values, negated)?,
        }
        Ok(())
    }

    fn typed(&mut self, field: &str, ty: ColumnType, value: &Value) -> Result<String, SearchError> {
        let param = match (ty, value) {
            (ColumnType::Text, Value::Str(s)) => Param::Text(s.clone()),
            (ColumnType::Text, _) => return fail(format!("{field} must be compared to a quoted string")),
            (ColumnType::Int, Value::Num(n)) => Param::Int(
                n.parse().map_err(|_| SearchError(format!("{field} must be compared to an integer, not {n}")))?,
            ),
            (ColumnType::Int, _) => return fail(format!("{field} must be compared to an integer")),
            (ColumnType::Time, Value::Str(s)) => Param::Time(
                DateTime::parse_from_rfc3339(s)
                    .map_err(|_| SearchError(format!("{field} must be compared to an RFC 3339 timestamp, not '{s}'")))?
                    .with_timezone(&Utc),
            ),
            (ColumnType::Time, _) => return fail(format!("{field} must be compared to a quoted RFC 3339 timestamp")),
            (ColumnType::Uuid, Value::Str(s)) => Param::Uuid(
                s.parse().map_err(|_| SearchError(format!("{field} must be compared to a UUID, not '{s}'")))?,
            ),
            (ColumnType::Uuid, _) => return fail(format!("{field} must be compared to a quoted UUID")),
        };
        self.bind(param)
    }

    fn cmp(&mut self, name: &str, at: usize, op: &str, value: &Value, negated: bool) -> Result<(), SearchError> {
        let sql = match resolve(name)? {
            Field::Column(col, ty) => {
                let p = self.typed(name, ty, value)?;
                format!("{col} {op} {p}")
            }
            Field::Label(key) => {
                no_negation(name, at, negated)?;
                let Value::Str(v) = value else { return fail(format!("{name} must be compared to a quoted string")) };
                let k = self.bind(Param::Text(key))?;
                let v = self.bind(Param::Text(v.clone()))?;
                if op == "=" {
                    format!("labels @> jsonb_build_object({k}::text, {v}::text)")
                } else {
                    format!("(labels ->> {k}::text) {op} {v}")
                }
            }
            Field::Spec(path) => {
                let p = self.bind(Param::Path(path))?;
                match value {
                    Value::Str(s) => {
                        let v = self.bind(Param::Text(s.clone()))?;
                        format!("(spec #>> {p}) {op} {v}")
                    }
                    Value::Num(n) => {
                        let v = self.bind(Param::Numeric(n.clone()))?;
                        format!(
                            "(case when jsonb_typeof(spec #> {p}) = 'number' then (spec #>> {p})::numeric end) \
                             {op} {v}::text::numeric"
                        )
                    }
                    Value::Bool(b) if op == "=" || op == "!=" => {
                        let v = self.bind(Param::Bool(*b))?;
                        format!("(spec #> {p}) {op} to_jsonb({v}::boolean)")
                    }
                    Value::Bool(_) => return fail(format!("{name}: true/false only compare with = or !=")),
                    Value::Word(w) => return fail(unquoted(w, at)),
                }
            }
            Field::Condition(ty) => {
                no_negation(name, at, negated)?;
                if op != "=" {
                    return fail(format!("{name} only supports '=' (with True, False or Unknown)"));
                }
                let status = match value {
                    Value::Str(s) | Value::Word(s) if ["True", "False", "Unknown"].contains(&s.as_str()) => s.clone(),
                    Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
                    _ => return fail(format!("{name} must be compared to True, False or Unknown")),
                };
                let t = self.bind(Param::Text(ty))?;
                let s = self.bind(Param::Text(status))?;
                format!("conditions @> jsonb_build_array(jsonb_build_object('type', {t}::text, 'status', {s}::text))")
            }
            Field::ConditionTime(ty, sub) => {
                no_negation(name, at, negated)?;
                let t = self.bind(Param::Text(ty))?;
                let v = self.typed(name, ColumnType::Time, value)?;
                format!(
                    "exists (select 1 from jsonb_array_elements(conditions) c where c ->> 'type' = {t} \
                     and (c ->> '{sub}')::timestamptz {op} {v})"
                )
            }
            Field::ConditionGeneration(ty) => {
                no_negation(name, at, negated)?;
                let t = self.bind(Param::Text(ty))?;
                let v = self.typed(name, ColumnType::Int, value)?;
                format!(
                    "exists (select 1 from jsonb_array_elements(conditions) c where c ->> 'type' = {t} \
                     and (c ->> 'observed_generation')::bigint {op} {v})"
                )
            }
        };
        self.sql.push_str(&sql);
        Ok(())
    }

    fn in_list(
        &mut self,
        name: &str,
        at: usize,
        not_in: bool,
        values: &[Value],
        negated: bool,
    ) -> Result<(), SearchError> {
        let lhs = match resolve(name)? {
            Field::Column(col, ty) => {
                let mut ps = Vec::with_capacity(values.len());
                for v in values {
                    ps.push(self.typed(name, ty, v)?);
                }
                return self.push_in(col.to_string(), not_in, &ps);
            }
            Field::Label(key) => {
                no_negation(name, at, negated || not_in)?;
                format!("(labels ->> {}::text)", self.bind(Param::Text(key))?)
            }
            Field::Spec(path) => format!("(spec #>> {})", self.bind(Param::Path(path))?),
            _ => return fail(format!("'in' is not supported for {name}")),
        };
        let mut ps = Vec::with_capacity(values.len());
        for v in values {
            let Value::Str(s) = v else { return fail(format!("values in the list for {name} must be quoted strings")) };
            ps.push(self.bind(Param::Text(s.clone()))?);
        }
        self.push_in(lhs, not_in, &ps)
    }

    fn push_in(&mut self, lhs: String, not_in: bool, placeholders: &[String]) -> Result<(), SearchError> {
        let not = if not_in { " not" } else { "" };
        self.sql.push_str(&format!("{lhs}{not} in ({})", placeholders.join(", ")));
        Ok(())
    }
}

fn no_negation(name: &str, at: usize, negated: bool) -> Result<(), SearchError> {
    if negated { fail(format!("'not' cannot be applied to {name} (position {at})")) } else { Ok(()) }
}

fn unquoted(word: &str, at: usize) -> String {
    format!("unquoted value '{word}' at position {at}: quote strings with single quotes")
}

/// Compiles a search query into a boolean SQL expression whose placeholders start at `$first`.
pub fn compile(input: &str, first: usize) -> Result<Filter, SearchError> {
    let len = input.chars().count();
    if len > MAX_LEN {
        return fail(format!("search query is {len} characters long; at most {MAX_LEN} are accepted"));
    }
    let tokens = lex(input)?;
    if tokens.is_empty() {
        return fail("search query is empty");
    }
    let mut parser = Parser { tokens, pos: 0, depth: 0, end: len + 1 };
    let expr = parser.expr()?;
    if let Some(extra) = parser.peek() {
        return fail(format!("unexpected {} at position {}", describe(&extra.tok), extra.at));
    }
    let mut compiler = Compiler { sql: String::new(), params: Vec::new(), first };
    compiler.expr(&expr, false)?;
    Ok(Filter { sql: compiler.sql, params: compiler.params })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(q: &str) -> Filter {
        compile(q, 3).unwrap_or_else(|e| panic!("{q}: {e}"))
    }
    fn err(q: &str) -> String {
        compile(q, 1).expect_err(q).0
    }

    #[test]
    fn comparisons_and_precedence() {
        let f = ok("name = 'a' or name != 'b' and generation >= 2");
        assert_eq!(f.sql, "(name = $3 or (name != $4 and generation >= $5))");
        assert_eq!(f.params, vec![Param::Text("a".into()), Param::Text("b".into()), Param::Int(2)]);
        let f = ok("(name = 'a' OR name = 'b') AND NOT generation < 2");
        assert_eq!(f.sql, "((name = $3 or name = $4) and (not generation < $5))");
    }

    #[test]
    fn quotes_escape_and_never_reach_the_sql() {
        let f = ok("name = 'it''s; drop table resources; --'");
        assert_eq!(f.sql, "name = $3");
        assert_eq!(f.params, vec![Param::Text("it's; drop table resources; --".into())]);
    }

    #[test]
    fn in_lists_with_either_bracket() {
        assert_eq!(ok("name in ('a', 'b')").sql, "name in ($3, $4)");
        assert_eq!(ok("name not in ['a']").sql, "name not in ($3)");
        assert_eq!(ok("labels.env in ('a','b')").sql, "(labels ->> $3::text) in ($4, $5)");
    }

    #[test]
    fn field_families() {
        assert_eq!(
            ok("labels.hyperfleet.io/cluster-id = 'x'").params[0],
            Param::Text("hyperfleet.io/cluster-id".into())
        );
        let f = ok("spec.region.name = 'eu'");
        assert_eq!(f.params[0], Param::Path(vec!["region".into(), "name".into()]));
        assert!(ok("spec.replicas > 2").sql.contains("::numeric"));
        assert!(ok("spec.enabled = true").sql.contains("to_jsonb"));
        assert!(ok("status.conditions.Reconciled = 'True'").sql.starts_with("conditions @>"));
        assert!(ok("status.conditions.Reconciled = False").sql.starts_with("conditions @>"));
        assert!(ok("status.conditions.Reconciled.last_updated_time < '2026-01-01T00:00:00Z'").sql.contains("exists"));
        assert!(ok("status.conditions.Reconciled.observed_generation >= 2").sql.contains("bigint"));
        assert_eq!(ok("created_time > '2026-01-01T00:00:00+02:00'").sql, "created_time > $3");
        assert_eq!(ok("id = '0190b4a2-0000-7000-8000-000000000000'").params.len(), 1);
    }

    #[test]
    fn rejections_name_the_problem() {
        assert!(err("generation = 'x'").contains("integer"));
        assert!(err("generation = 1.5").contains("integer"));
        assert!(err("created_time > 'yesterday'").contains("RFC 3339"));
        assert!(err("id = 'nope'").contains("UUID"));
        assert!(err("name = 3").contains("quoted string"));
        assert!(err("color = 'red'").contains("invalid field in search query: 'color'"));
        assert!(err("not labels.a = 'b'").contains("'not' cannot be applied"));
        assert!(err("not (status.conditions.Ready = 'True')").contains("'not' cannot be applied"));
        assert!(err("status.conditions.Ready = 'Maybe'").contains("True, False or Unknown"));
        assert!(err("status.conditions.Ready != 'True'").contains("only supports '='"));
        assert!(err("status.conditions.ready = 'True'").contains("PascalCase"));
        assert!(err("spec.a-b = 'x'").contains("invalid spec path"));
        assert!(err("name = 'a").contains("unterminated"));
        assert!(err("name = 'a' extra").contains("unexpected 'extra'"));
        assert!(err("(name = 'a'").contains("unexpected end"));
        assert!(err("").contains("empty"));
        assert!(err("name = 'a'; delete from resources").contains("unexpected character ';'"));
        assert!(err("name = 'a' -- comment").contains("unexpected character '-'"));
        assert!(err("name = 'a' /* x */").contains("unexpected character '/'"));
        assert!(err(&"(".repeat(100)).contains("deeper"));
        assert!(err(&format!("name = '{}'", "x".repeat(MAX_LEN))).contains("at most 4096"));
        let many = vec!["'a'"; MAX_PARAMS + 1].join(",");
        assert!(err(&format!("name in ({many})")).contains("more than"));
    }
}
