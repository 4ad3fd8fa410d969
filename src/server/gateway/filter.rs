//! The broadcast filter (PROTOCOL.md 8.7): `condition` if present, else `tags` if present,
//! else everyone.

/// Whether a device bound with `bind_tags` gets a broadcast with `tags_json` (a JSON array
/// string, or empty) and `condition` (or empty).
///
/// A condition is a JavaScript expression the real server evaluates with the JDK's script
/// engine; JDK 15 and later ship none, so every condition is false there (live, JDK 17).
/// This server has no engine either: a condition matches no device. Tags match when the
/// device's bind tags contain one of them as a substring ("vip" matches "supervip"); a device
/// with no bind tags never matches; tags that are not a JSON array of strings match nobody.
pub(crate) fn matches(tags_json: &str, condition: &str, bind_tags: &str) -> bool {
    if !condition.is_empty() {
        return false;
    }
    if tags_json.is_empty() {
        return true;
    }
    if bind_tags.is_empty() {
        return false;
    }
    let Ok(wanted) = serde_json::from_str::<Vec<String>>(tags_json) else {
        return false;
    };
    wanted.iter().any(|t| bind_tags.contains(t.as_str()))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn tags_are_substrings_conditions_match_nobody() {
        assert!(matches("", "", ""), "no filter: everyone");
        assert!(matches(r#"["vip"]"#, "", "vip,test"));
        assert!(
            matches(r#"["vip"]"#, "", "supervip"),
            "no splitting on commas"
        );
        assert!(matches(r#"["x","test"]"#, "", "vip,test"));
        assert!(!matches(r#"["nomatch"]"#, "", "vip,test"));
        assert!(!matches(r#"["vip"]"#, "", ""), "no bind tags never match");
        assert!(!matches("not json", "", "vip"));
        assert!(
            !matches(r#"["vip"]"#, "tags!=null", "vip"),
            "no JavaScript engine"
        );
        assert!(!matches("", "true", "vip"));
    }
}
