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

/// A query's `SELECT`: its text, its bound values in order, and the (API name, column) of each
/// column it selects.
#[derive(Debug)]
pub struct SelectStatement {
    pub sql: String,
    pub args: Vec<SqlValue>,
    pub selected: Vec<(&'static str, &'static str)>,
}

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
        let SelectStatement {
            sql,
            args,
            selected,
        } = self.select_statement(t, sort)?;
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

    /// The `SELECT` this query runs on `t` in the order of `sort`: only whitelisted columns and
    /// SQL keywords reach its text, every condition value is one of its bound `args`, and
    /// `limit`/`start` are checked integers.
    pub fn select_statement(
        &self,
        t: &Table,
        sort: Option<&Sort>,
    ) -> Result<SelectStatement, ApiError> {
        let selected: Vec<(&'static str, &'static str)> = match &self.fields {
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
        Ok(SelectStatement {
            sql,
            args,
            selected,
        })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use serde_json::json;

    use super::*;

    const VMS: Table = Table {
        resource: "VmInstance",
        table: "vm",
        fields: &[
            ("uuid", "uuid"),
            ("name", "name"),
            ("cpuNum", "cpu_num"),
            ("hostUuid", "host_uuid"),
        ],
        expand: None,
    };

    /// The request's query and sort, or the first refusal.
    fn parse(params: Value) -> Result<(Query, Option<Sort>), ApiError> {
        let params = params.as_object().unwrap();
        Ok((Query::from_params(params)?, Sort::from_params(params)?))
    }

    fn statement(params: Value) -> Result<SelectStatement, ApiError> {
        let (q, sort) = parse(params)?;
        q.select_statement(&VMS, sort.as_ref())
    }

    fn refused(params: Value) -> ApiError {
        match statement(params.clone()) {
            Ok(s) => panic!("{params} was taken: {}", s.sql),
            Err(e) => e,
        }
    }

    fn text(values: &[&str]) -> Vec<SqlValue> {
        values
            .iter()
            .map(|v| SqlValue::Text(v.to_string()))
            .collect()
    }

    fn condition(name: &str, op: &str, value: &str) -> Value {
        json!({"conditions": [{"name": name, "op": op, "value": value}]})
    }

    /// A `vm` table with web1 (1 CPU, on h1), web2 (2 CPUs, on h2), "007" (4 CPUs, no host).
    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE vm (uuid TEXT PRIMARY KEY, name TEXT, cpu_num INTEGER, host_uuid TEXT);
             INSERT INTO vm VALUES ('u1', 'web1', 1, 'h1'), ('u2', 'web2', 2, 'h2'),
                                   ('u3', '007', 4, NULL);",
        )
        .unwrap();
        conn
    }

    fn names(conn: &Connection, params: Value) -> Vec<String> {
        let (q, sort) = parse(params).unwrap();
        q.run_sorted(conn, &VMS, sort.as_ref())
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn each_operator_becomes_its_clause_with_the_value_bound() {
        let cases = [
            ("name", "=", "web1", "name = ?", text(&["web1"])),
            ("name", "!=", "web1", "name <> ?", text(&["web1"])),
            ("cpuNum", ">", "1", "cpu_num > ?", text(&["1"])),
            ("cpuNum", ">=", "1", "cpu_num >= ?", text(&["1"])),
            ("cpuNum", "<", "2", "cpu_num < ?", text(&["2"])),
            ("cpuNum", "<=", "2", "cpu_num <= ?", text(&["2"])),
            ("name", "~=", "web%", "name LIKE ?", text(&["web%"])),
            ("name", "!~=", "web%", "name NOT LIKE ?", text(&["web%"])),
            ("uuid", "?=", "u1,u2", "uuid IN (?,?)", text(&["u1", "u2"])),
            ("uuid", "!?=", "u1", "uuid NOT IN (?)", text(&["u1"])),
            ("hostUuid", "is null", "", "host_uuid IS NULL", vec![]),
            ("hostUuid", "not null", "", "host_uuid IS NOT NULL", vec![]),
        ];
        for (name, op, value, clause, args) in cases {
            let s = statement(condition(name, op, value)).unwrap();
            assert_eq!(
                s.sql,
                format!(
                    "SELECT uuid, name, cpu_num, host_uuid FROM vm WHERE {clause} ORDER BY rowid"
                ),
                "{name}{op}{value}"
            );
            assert_eq!(s.args, args, "{name}{op}{value}");
        }
    }

    #[test]
    fn conditions_are_joined_with_and_and_default_to_equals() {
        let s = statement(json!({"conditions": [
            {"name": "name", "value": "web1"},
            {"name": "cpuNum", "op": ">=", "value": 2},
        ]}))
        .unwrap();
        assert!(
            s.sql.contains(" WHERE name = ? AND cpu_num >= ? ORDER BY"),
            "{}",
            s.sql
        );
        assert_eq!(
            s.args,
            text(&["web1", "2"]),
            "a number is bound as its text"
        );
    }

    #[test]
    fn malformed_conditions_are_refused_on_the_conditions_field() {
        for params in [
            json!({"conditions": "name=web1"}),
            json!({"conditions": [{"op": "=", "value": "web1"}]}),
            condition("uuid", "?=", ","),
            condition("name", "like", "web%"),
        ] {
            let e = refused(params.clone());
            assert_eq!(
                e.field.as_deref(),
                Some("conditions"),
                "{params}: {}",
                e.message
            );
            assert_eq!(e.status.as_u16(), 400, "{params}");
        }
        let e = refused(condition("name", "like", "web%"));
        assert!(
            e.message.contains("~="),
            "the operators are listed: {}",
            e.message
        );
    }

    #[test]
    fn fields_select_their_columns_by_api_name_and_unknown_ones_are_refused() {
        let s = statement(json!({"fields": ["name", "cpuNum"]})).unwrap();
        assert!(
            s.sql.starts_with("SELECT name, cpu_num FROM vm"),
            "{}",
            s.sql
        );
        assert_eq!(s.selected, [("name", "name"), ("cpuNum", "cpu_num")]);
        let s = statement(json!({"fields": " uuid, name ,"})).unwrap();
        assert_eq!(s.selected, [("uuid", "uuid"), ("name", "name")]);
        let e = refused(json!({"fields": ["name", "colour"]}));
        assert_eq!(e.field.as_deref(), Some("fields"));
        assert!(
            e.message.contains("\"colour\"") && e.message.contains("uuid, name, cpuNum, hostUuid"),
            "{}",
            e.message
        );
        for bad in [json!({"fields": []}), json!({"fields": 3})] {
            assert_eq!(refused(bad).field.as_deref(), Some("fields"));
        }
    }

    #[test]
    fn sort_orders_by_the_field_then_creation_and_takes_only_asc_or_desc() {
        let s = statement(json!({"sortBy": "cpuNum", "sortDirection": "desc"})).unwrap();
        assert!(
            s.sql.ends_with(" ORDER BY cpu_num DESC, rowid"),
            "{}",
            s.sql
        );
        let s = statement(json!({"sortBy": "name"})).unwrap();
        assert!(s.sql.ends_with(" ORDER BY name ASC, rowid"), "{}", s.sql);
        let s = statement(json!({})).unwrap();
        assert!(s.sql.ends_with(" ORDER BY rowid"), "{}", s.sql);
        assert_eq!(
            refused(json!({"sortBy": "colour"})).field.as_deref(),
            Some("sortBy")
        );
        assert_eq!(
            refused(json!({"sortBy": ""})).field.as_deref(),
            Some("sortBy")
        );
        assert_eq!(
            refused(json!({"sortBy": "name", "sortDirection": "up"}))
                .field
                .as_deref(),
            Some("sortDirection")
        );
    }

    #[test]
    fn paging_is_limit_and_offset_with_checked_integers() {
        let ends = |params: Value| statement(params).unwrap().sql;
        assert!(ends(json!({"limit": 2})).ends_with("rowid LIMIT 2"));
        assert!(ends(json!({"limit": "2", "start": 4})).ends_with("rowid LIMIT 2 OFFSET 4"));
        assert!(
            ends(json!({"start": 4})).ends_with("rowid LIMIT -1 OFFSET 4"),
            "OFFSET needs a LIMIT in SQLite"
        );
        for (params, field) in [
            (json!({"limit": -1}), "limit"),
            (json!({"limit": "2; DROP TABLE vm"}), "limit"),
            (json!({"start": 1.5}), "start"),
            (json!({"start": "-3"}), "start"),
        ] {
            let e = refused(params.clone());
            assert_eq!(e.field.as_deref(), Some(field), "{params}");
        }
    }

    #[test]
    fn injection_through_names_operators_fields_or_sort_is_refused() {
        let attempts = [
            condition("name = name OR 1=1 --", "=", "x"),
            condition("name", "= name OR 1=1 --", "x"),
            json!({"fields": ["uuid FROM vm; DROP TABLE vm; --"]}),
            json!({"fields": "name, (SELECT sql FROM sqlite_master)"}),
            json!({"sortBy": "rowid; DROP TABLE vm"}),
            json!({"sortBy": "name", "sortDirection": "DESC; DROP TABLE vm"}),
        ];
        for params in attempts {
            let e = refused(params.clone());
            assert_eq!(e.status.as_u16(), 400, "{params}");
        }
    }

    #[test]
    fn a_value_is_only_ever_data() {
        let conn = db();
        for value in [
            "x' OR '1'='1",
            "web1'; DROP TABLE vm; --",
            "%' OR name LIKE '%",
        ] {
            let s = statement(condition("name", "=", value)).unwrap();
            assert!(!s.sql.contains(value), "{}", s.sql);
            assert_eq!(
                names(&conn, condition("name", "=", value)),
                Vec::<String>::new()
            );
        }
        assert_eq!(names(&conn, json!({})).len(), 3, "the table is untouched");
    }

    #[test]
    fn a_run_filters_sorts_pages_and_counts_on_the_table() {
        let conn = db();
        assert_eq!(
            names(&conn, condition("cpuNum", ">=", "2")),
            ["web2", "007"]
        );
        assert_eq!(names(&conn, condition("name", "=", "007")), ["007"]);
        assert_eq!(
            names(&conn, condition("name", "~=", "web%")),
            ["web1", "web2"]
        );
        assert_eq!(names(&conn, condition("hostUuid", "is null", "")), ["007"]);
        assert_eq!(names(&conn, condition("uuid", "!?=", "u1,u3")), ["web2"]);
        assert_eq!(
            names(&conn, json!({"sortBy": "cpuNum", "sortDirection": "desc"})),
            ["007", "web2", "web1"]
        );
        assert_eq!(
            names(&conn, json!({"sortBy": "name", "start": 1, "limit": 1})),
            ["web1"]
        );
        let (q, _) = parse(json!({"limit": 1, "start": 1,
                                  "conditions": [{"name": "cpuNum", "op": "<", "value": "4"}]}))
        .unwrap();
        assert_eq!(
            q.count(&conn, &VMS).unwrap(),
            2,
            "count ignores limit and start"
        );
        let (q, _) = parse(json!({"fields": ["name"]})).unwrap();
        let rows = q.run(&conn, &VMS).unwrap();
        assert_eq!(rows[0], json!({"name": "web1"}));
    }
}
