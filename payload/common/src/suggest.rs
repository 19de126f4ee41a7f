//! "Did you mean ...?": the known name closest to what was typed, by edit distance.

/// The candidate closest to `name` (case-insensitive Levenshtein distance).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> &'a str {
    let name = name.to_lowercase();
    candidates
        .into_iter()
        .min_by_key(|c| edit_distance(&name, &c.to_lowercase()))
        .unwrap_or("")
}

pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn closest_names() {
        assert_eq!(super::edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            super::closest("CreateZon", ["CreateZone", "DeleteZone", "QueryZone"]),
            "CreateZone"
        );
        assert_eq!(
            super::closest("kvmagent.prt", ["kvmagent.port", "kvmagent.secret"]),
            "kvmagent.port"
        );
    }
}
