//! "Did you mean …?": the closest of a set of names to a word an operator typed, and the
//! set itself written as a short list. Used for unknown keys and unknown pool names.

/// How many names a list shows before it says how many more there are.
const LISTED: usize = 12;

/// The candidate closest to `word`, if one is close enough to be what was meant: a typo (a
/// letter missing, extra, wrong or two swapped; about one edit per four letters), another
/// spelling (`max-connections`, `Timeouts`), or the start of the name (`health` for
/// `health_check`).
pub(super) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let typed = normalise(word);
    let mut best: Option<(usize, &'a str)> = None;
    for &candidate in candidates {
        let known = normalise(candidate);
        let distance = if known == typed {
            0
        } else if typed.len() >= 3 && (known.starts_with(&typed) || typed.starts_with(&known)) {
            1
        } else {
            edits(&typed, &known)
        };
        let allowed = (typed.chars().count().max(known.chars().count()) + 2) / 4;
        if distance <= allowed.max(1) && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, name)| name)
}

/// `a, b, c` (backquoted), or the first few and how many more.
pub(super) fn list(names: &[&str]) -> String {
    let mut out: Vec<String> = names
        .iter()
        .take(LISTED)
        .map(|n| format!("`{n}`"))
        .collect();
    if names.len() > LISTED {
        out.push(format!("and {} more", names.len() - LISTED));
    }
    out.join(", ")
}

fn normalise(s: &str) -> String {
    s.trim().to_lowercase().replace('-', "_")
}

/// Edits (insert, delete, substitute, swap two neighbours) from `a` to `b`: the optimal
/// string alignment distance, over characters. Both are short (keys and names).
fn edits(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: edits from a[..i] to b[..j]; three rows are all the recurrence reads.
    let mut before = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut row = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        row[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (prev[j] + 1).min(row[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["protocol", "bind", "pool", "limits", "timeouts", "udp"];

    #[test]
    fn typos_find_the_key_that_was_meant() {
        assert_eq!(closest("timout", KEYS), Some("timeouts"));
        assert_eq!(closest("tiemouts", KEYS), Some("timeouts"));
        assert_eq!(closest("bindd", KEYS), Some("bind"));
        assert_eq!(closest("pol", KEYS), Some("pool"));
        assert_eq!(closest("Limits", KEYS), Some("limits"));
        assert_eq!(
            closest("health", &["health_check", "passive"]),
            Some("health_check")
        );
        assert_eq!(
            closest("max-connections", &["max_connections", "per_source"]),
            Some("max_connections")
        );
    }

    #[test]
    fn unrelated_words_suggest_nothing() {
        assert_eq!(closest("x", KEYS), None);
        assert_eq!(closest("frontend", KEYS), None);
        assert_eq!(closest("", KEYS), None);
    }

    #[test]
    fn edits_count_swaps_once() {
        assert_eq!(edits("ab", "ba"), 1);
        assert_eq!(edits("kitten", "sitting"), 3);
        assert_eq!(edits("", "abc"), 3);
    }

    #[test]
    fn long_lists_are_cut() {
        let names: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let shown = list(&names);
        assert!(shown.starts_with("`p0`, `p1`"), "{shown}");
        assert!(shown.ends_with("`p11`, and 8 more"), "{shown}");
    }
}
