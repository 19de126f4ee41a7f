//! `--table`: inventories as rows and columns, for people; JSON stays the format for scripts.

use serde_json::{Map, Value};

/// Cells holding a list or an object show this many characters of their JSON at most.
const MAX_NESTED: usize = 40;

/// The table for `{"inventories": [...]}` (a row per item) or `{"inventory": {...}}` (one row);
/// `None` for any other answer, which is printed as JSON. An empty list has no rows and no
/// columns, so it renders as nothing. Columns follow the order in which keys first appear, which
/// is the server's order (the workspace enables serde_json's `preserve_order`).
pub fn render(v: &Value) -> Option<String> {
    let members = match v {
        Value::Object(members) if members.len() == 1 => members,
        _ => return None,
    };
    let rows: Vec<&Map<String, Value>> = match members.iter().next()? {
        (k, Value::Array(items)) if k == "inventories" => {
            items.iter().map(Value::as_object).collect::<Option<_>>()?
        }
        (k, Value::Object(row)) if k == "inventory" => vec![row],
        _ => return None,
    };
    let mut columns: Vec<&str> = Vec::new();
    for row in &rows {
        for k in row.keys() {
            if !columns.contains(&k.as_str()) {
                columns.push(k);
            }
        }
    }
    if columns.is_empty() {
        return Some(String::new());
    }
    let header: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| cell(row.get(*c))).collect())
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            std::iter::once(&header)
                .chain(&body)
                .map(|line| width(&line[i]))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let separator: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let mut out = String::new();
    for line in std::iter::once(&header)
        .chain(std::iter::once(&separator))
        .chain(&body)
    {
        let mut text = String::new();
        for (i, c) in line.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(c);
            text.push_str(&" ".repeat(widths[i] - width(c)));
        }
        // The last column is padded too; trailing blanks would only confuse `diff` and `cut`.
        out.push_str(text.trim_end());
        out.push('\n');
    }
    Some(out)
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        // A line break or tab inside a cell would break the row apart.
        Some(Value::String(s)) => s.replace(['\n', '\r', '\t'], " "),
        Some(nested @ (Value::Array(_) | Value::Object(_))) => {
            let json = nested.to_string();
            if width(&json) > MAX_NESTED {
                let mut cut: String = json.chars().take(MAX_NESTED - 1).collect();
                cut.push('…');
                cut
            } else {
                json
            }
        }
        Some(scalar) => scalar.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Value {
        serde_json::from_str(text).expect("JSON")
    }

    #[test]
    fn inventories_are_rows_with_the_union_of_keys() {
        let v = json(
            r#"{"inventories": [
                {"uuid": "a1", "name": "zone1", "state": "Enabled", "description": null},
                {"uuid": "b22", "name": "z2", "cpuNum": 4, "ha": true, "description": "two\nlines"}
            ]}"#,
        );
        let expected = "\
uuid  name   state    description  cpuNum  ha
----  -----  -------  -----------  ------  ----
a1    zone1  Enabled
b22   z2              two lines    4       true
";
        assert_eq!(render(&v).as_deref(), Some(expected));

        // Columns follow the order keys are first seen in, not the alphabet nor a later row.
        let v = json(r#"{"inventories": [{"zone": "z", "b": 1}, {"a": 2, "b": 3, "zone": "y"}]}"#);
        assert_eq!(
            render(&v).as_deref(),
            Some("zone  b  a\n----  -  -\nz     1\ny     3  2\n")
        );
    }

    #[test]
    fn one_inventory_is_one_row_and_nested_values_are_truncated_json() {
        let v = json(
            r#"{"inventory": {
                "uuid": "u",
                "tags": ["a", "b"],
                "services": {"0123456789abcdef0123456789abcdef": ["DHCP", "Eip", "SNAT"]}
            }}"#,
        );
        let services = r#"{"0123456789abcdef0123456789abcdef":["D…"#;
        assert_eq!(services.chars().count(), 40);
        let expected = format!(
            "uuid  tags       services\n\
             ----  ---------  {}\n\
             u     [\"a\",\"b\"]  {services}\n",
            "-".repeat(40)
        );
        assert_eq!(render(&v), Some(expected));
    }

    #[test]
    fn other_answers_are_not_tables() {
        for other in [
            "{}",
            r#"{"total": 3}"#,
            r#"{"inventories": [1, 2]}"#,
            r#"{"inventories": [], "total": 0}"#,
            r#"{"inventory": null}"#,
            r#"{"error": {"code": "X"}}"#,
            "[]",
        ] {
            assert_eq!(render(&json(other)), None, "{other}");
        }
        assert_eq!(render(&json(r#"{"inventories": []}"#)).as_deref(), Some(""));
    }
}
