//! Queries with the original's conditions: `name=vm1`, `state!=Running`, `cpuNum>=2`,
//! `name~=web%`, `uuid?=a,b`, plus `fields=` and `limit=`. A condition arrives as
//! `{"name", "op", "value"}`; fields are the API's camelCase names, mapped to columns through a
//! whitelist, and every value is a bound parameter.

use rusqlite::types::Value as SqlValue;
use rusqlite::Connection;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A queryable resource: its table and its fields (API name, column).
pub struct Table {
    pub resource: &'static str,
    pub table: &'static str,
    pub fields: &'static [(&'static str, &'static str)],
    /// Adds what a row of the table alone does not hold (a VM's NICs and volumes, ...), when the
    /// whole inventory is asked for.
    pub expand: Option<Expand>,
}

pub type Expand = fn(&Connection, &mut Map<String, Value>) -> Result<(), ApiError>;

pub const OPS: &[&str] = &[
    "=", "!=", ">", ">=", "<", "<=", "~=", "!~=", "?=", "!?=", "is null", "not null",
];

pub struct Query {
    pub conditions: Vec<(String, String, String)>,
    pub fields: Option<Vec<String>>,
    pub limit: Option<i64>,
    pub start: Option<i64>,
}

impl Query {
    /// Reads `conditions`, `fields`, `limit`, `start` from an API request.
    pub fn from_params(params: &Map<String, Value>) -> Result<Query, ApiError> {
        let mut conditions = Vec::new();
        if let Some(c) = params.get("conditions") {
            let list = c
                .as_array()
                .ok_or_else(|| ApiError::invalid("conditions", "conditions must be a list"))?;
            for item in list {
                let get = |k: &str| {
                    item.get(k).and_then(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .or_else(|| (!v.is_null()).then(|| v.to_string()))
                    })
                };
                let name = get("name")
                    .ok_or_else(|| ApiError::invalid("conditions", "a condition needs a name"))?;
                let op = get("op").unwrap_or_else(|| "=".into());
                let value = get("value").unwrap_or_default();
                conditions.push((name, op, value));
            }
        }
        let fields = match params.get("fields") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            ),
            Some(Value::String(s)) => Some(
                s.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect(),
            ),
            Some(_) => {
                return Err(ApiError::invalid(
                    "fields",
                    "fields must be a list of field names",
                ))
            }
        };
        let num = |k: &str| -> Result<Option<i64>, ApiError> {
            match params.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|n| *n >= 0)
                    .map(Some)
                    .ok_or_else(|| {
                        ApiError::invalid(k, format!("{k} must be a non-negative integer"))
                    }),
            }
        };
        if fields.as_ref().is_some_and(Vec::is_empty) {
            return Err(ApiError::invalid(
                "fields",
                "fields names no field; give at least one field name, or leave fields out for all",
            ));
        }
        Ok(Query {
            conditions,
            fields,
            limit: num("limit")?,
            start: num("start")?,
        })
    }

    pub fn by_uuid(uuid: &str) -> Query {
        Query {
            conditions: vec![("uuid".into(), "=".into(), uuid.into())],
            fields: None,
            limit: None,
            start: None,
        }
    }

    /// How many rows match, ignoring `limit` and `start`.
    pub fn count(&self, conn: &Connection, t: &Table) -> Result<i64, ApiError> {
        let (wheres, args) = self.where_clause(t)?;
        let sql = format!("SELECT count(*) FROM {}{wheres}", t.table);
        Ok(conn.query_row(&sql, rusqlite::params_from_iter(args.iter()), |r| r.get(0))?)
    }

    pub fn run(&self, conn: &Connection, t: &Table) -> Result<Vec<Value>, ApiError> {
        self.run_sorted(conn, t, None)
    }

    /// [`Query::run`] in the order of `sort` (then creation order), or creation order alone.
    pub fn run_sorted(
        &self,
        conn: &Connection,
        t: &Table,
        sort: Option<&Sort>,
    ) -> Result<Vec<Value>, ApiError> {
        let selected: Vec<(&str, &str)> = match &self.fields {
            None => t.fields.to_vec(),
            Some(list) => list
                .iter()
                .map(|f| {
                    column(t, f, "fields").map(|c| {
                        (
                            t.fields
                                .iter()
                                .find(|(_, col)| *col == c)
                                .map(|(a, _)| *a)
                                .unwrap_or(""),
                            c,
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let (wheres, args) = self.where_clause(t)?;
        let order = match sort {
            None => String::new(),
            Some(s) => format!(
                "{} {}, ",
                column(t, &s.field, "sortBy")?,
                if s.descending { "DESC" } else { "ASC" }
            ),
        };
        let mut sql = format!(
            "SELECT {} FROM {}{wheres} ORDER BY {order}rowid",
            selected
                .iter()
                .map(|(_, c)| *c)
                .collect::<Vec<_>>()
                .join(", "),
            t.table
        );
        // SQLite takes OFFSET only after a LIMIT; -1 is no limit.
        match (self.limit, self.start) {
            (Some(l), Some(s)) => sql.push_str(&format!(" LIMIT {l} OFFSET {s}")),
            (Some(l), None) => sql.push_str(&format!(" LIMIT {l}")),
            (None, Some(s)) => sql.push_str(&format!(" LIMIT -1 OFFSET {s}")),
            (None, None) => {}
        }
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
            let mut m = Map::new();
            for (i, (api, _)) in selected.iter().enumerate() {
                let v: SqlValue = r.get(i)?;
                m.insert(api.to_string(), to_json(v));
            }
            Ok(m)
        })?;
        let mut out = Vec::new();
        for row in rows {
            let mut m = row?;
            if let (Some(expand), None) = (t.expand, &self.fields) {
                expand(conn, &mut m)?;
            }
            out.push(Value::Object(m));
        }
        Ok(out)
    }

    fn where_clause(&self, t: &Table) -> Result<(String, Vec<SqlValue>), ApiError> {
        let mut args: Vec<SqlValue> = Vec::new();
        let mut wheres = Vec::new();
        for (name, op, value) in &self.conditions {
            let col = column(t, name, "conditions")?;
            let clause = match op.as_str() {
                "=" | "!=" | ">" | ">=" | "<" | "<=" => {
                    args.push(typed(value));
                    let sql_op = if op == "!=" { "<>" } else { op.as_str() };
                    format!("{col} {sql_op} ?")
                }
                "~=" | "!~=" => {
                    args.push(SqlValue::Text(value.clone()));
                    format!("{col} {}LIKE ?", if op == "!~=" { "NOT " } else { "" })
                }
                "?=" | "!?=" => {
                    let items: Vec<&str> = value.split(',').filter(|s| !s.is_empty()).collect();
                    if items.is_empty() {
                        return Err(ApiError::invalid(
                            "conditions",
                            format!("{name}{op} needs a comma-separated list"),
                        ));
                    }
                    for i in &items {
                        args.push(typed(i));
                    }
                    format!(
                        "{col} {}IN ({})",
                        if op == "!?=" { "NOT " } else { "" },
                        vec!["?"; items.len()].join(",")
                    )
                }
                "is null" => format!("{col} IS NULL"),
                "not null" => format!("{col} IS NOT NULL"),
                other => {
                    return Err(ApiError::invalid(
                        "conditions",
                        format!("unknown operator {other:?}; operators: {}", OPS.join(" ")),
                    ))
                }
            };
            wheres.push(clause);
        }
        let sql = if wheres.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", wheres.join(" AND "))
        };
        Ok((sql, args))
    }
}

/// The order of a query's results: `sortBy` (a field) and `sortDirection` (`asc`, `desc`).
pub struct Sort {
    pub field: String,
    pub descending: bool,
}

impl Sort {
    /// Reads `sortBy` and `sortDirection`; `None` without `sortBy`.
    pub fn from_params(params: &Map<String, Value>) -> Result<Option<Sort>, ApiError> {
        let field = match params.get("sortBy") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err(ApiError::invalid("sortBy", "sortBy must be a field name")),
        };
        let descending = match params.get("sortDirection").and_then(Value::as_str) {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "sortDirection",
                    format!("sortDirection is asc or desc, not {other:?}"),
                ))
            }
        };
        Ok(Some(Sort { field, descending }))
    }
}

fn column(t: &Table, name: &str, what: &str) -> Result<&'static str, ApiError> {
    t.fields
        .iter()
        .find(|(api, _)| *api == name)
        .map(|(_, col)| *col)
        .ok_or_else(|| {
            let names: Vec<&str> = t.fields.iter().map(|(a, _)| *a).collect();
            ApiError::invalid(
                what,
                format!(
                    "{} has no field {name:?}; fields: {}",
                    t.resource,
                    names.join(", ")
                ),
            )
        })
}

/// A condition's value, bound as text: the column's declared type decides how it compares
/// (SQLite applies an INTEGER column's affinity to it, so `cpuNum>=2` compares numbers and
/// `name=007` stays the text "007").
fn typed(v: &str) -> SqlValue {
    SqlValue::Text(v.to_string())
}

fn to_json(v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::from(i),
        SqlValue::Real(f) => Value::from(f),
        SqlValue::Text(s) => Value::String(s),
        SqlValue::Blob(b) => Value::String(hex::encode(b)),
    }
}
