//! `--devices-file FILE`: the devices of a proxy fleet by their real identities, one a line.
//!
//! Two formats, told apart by the extension (`.jsonl`, `.ndjson`, `.json`; `.csv`) or, for any
//! other name, by the first line that is not blank (`{` means JSON lines):
//!
//! - JSON lines: `{"deviceId":"d1","userId":"u1","tags":"a,b","osName":"ios"}`; only
//!   `deviceId` is required, unknown keys are refused (a typo must not pass silently).
//! - CSV: `deviceId,userId,tags,osName,osVersion,clientVersion`, in that order or in the
//!   order of a header line that names them; later columns may be left out. Fields may be
//!   quoted (`"a,b"`, with `""` for a quote).
//!
//! Blank lines and lines starting with `#` are skipped. Any error names the line, and the
//! run refuses to start (a usage error, exit 2): a proxy must not start with half its list.

use std::collections::HashSet;
use std::path::Path;

use crate::device::Identity;

/// The columns, in the default CSV order.
const COLUMNS: [&str; 6] = [
    "deviceId",
    "userId",
    "tags",
    "osName",
    "osVersion",
    "clientVersion",
];

/// Reads and checks a devices file.
///
/// # Errors
/// The file cannot be read, a line does not parse (named by its number), a device id is
/// empty or repeated, or the file lists no device.
pub fn load(path: &Path) -> Result<Vec<Identity>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--devices-file {}: {e}", path.display()))?;
    parse(&text, format_of(path, &text))
        .map_err(|e| format!("--devices-file {}: {e}", path.display()))
}

/// The two formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object a line.
    JsonLines,
    /// Comma-separated fields.
    Csv,
}

fn format_of(path: &Path, text: &str) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl" | "ndjson" | "json") => Format::JsonLines,
        Some("csv") => Format::Csv,
        _ => {
            let first = text.lines().map(str::trim).find(|l| !skipped(l));
            if first.is_some_and(|l| l.starts_with('{')) {
                Format::JsonLines
            } else {
                Format::Csv
            }
        }
    }
}

fn skipped(line: &str) -> bool {
    line.is_empty() || line.starts_with('#')
}

/// Parses a devices file's text.
///
/// # Errors
/// As [`load`].
pub fn parse(text: &str, format: Format) -> Result<Vec<Identity>, String> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut columns: Option<Vec<usize>> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if skipped(line) {
            continue;
        }
        let identity = match format {
            Format::JsonLines => serde_json::from_str::<Identity>(line)
                .map_err(|e| format!("line {n}: not a device ({e})"))?,
            Format::Csv => {
                let fields = split_csv(line).map_err(|e| format!("line {n}: {e}"))?;
                if columns.is_none() && fields.first().is_some_and(|f| f == "deviceId") {
                    columns = Some(header(&fields).map_err(|e| format!("line {n}: {e}"))?);
                    continue;
                }
                let order = columns.get_or_insert_with(|| (0..COLUMNS.len()).collect());
                from_fields(&fields, order).map_err(|e| format!("line {n}: {e}"))?
            }
        };
        if identity.device_id.is_empty() {
            return Err(format!("line {n}: the deviceId is empty"));
        }
        if !seen.insert(identity.device_id.clone()) {
            return Err(format!(
                "line {n}: deviceId {} is listed twice",
                identity.device_id
            ));
        }
        out.push(identity);
    }
    if out.is_empty() {
        return Err("it lists no device".into());
    }
    if u32::try_from(out.len()).is_err() {
        return Err("it lists more devices than a fleet can hold".into());
    }
    Ok(out)
}

/// The column of each field of a header line.
fn header(fields: &[String]) -> Result<Vec<usize>, String> {
    fields
        .iter()
        .map(|f| {
            COLUMNS
                .iter()
                .position(|c| c == f)
                .ok_or_else(|| format!("unknown column {f:?} (columns: {})", COLUMNS.join(", ")))
        })
        .collect()
}

fn from_fields(fields: &[String], order: &[usize]) -> Result<Identity, String> {
    if fields.len() > order.len() {
        return Err(format!(
            "{} fields, at most {} expected ({})",
            fields.len(),
            order.len(),
            COLUMNS.join(", ")
        ));
    }
    let mut id = Identity::default();
    for (field, &col) in fields.iter().zip(order) {
        let slot = match col {
            0 => &mut id.device_id,
            1 => &mut id.user_id,
            2 => &mut id.tags,
            3 => &mut id.os_name,
            4 => &mut id.os_version,
            _ => &mut id.client_version,
        };
        slot.clone_from(field);
    }
    Ok(id)
}

/// Splits one CSV line; fields are trimmed unless quoted.
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field is not closed".into()),
                }
            }
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("{c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim().to_owned());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("a quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field.trim().to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_and_csv_read_the_same_devices() {
        let json = "{\"deviceId\":\"d1\",\"userId\":\"u1\",\"tags\":\"a,b\"}\n\n\
                    # a comment\n{\"deviceId\":\"d2\",\"osName\":\"ios\"}\n";
        let csv = "d1,u1,\"a,b\"\nd2,,,ios\n";
        let header = "deviceId,osName,userId,tags\nd1,,u1,\"a,b\"\nd2,ios\n";
        let a = parse(json, Format::JsonLines).unwrap();
        assert_eq!(a, parse(csv, Format::Csv).unwrap());
        assert_eq!(a, parse(header, Format::Csv).unwrap());
        assert_eq!(a[0].tags, "a,b");
        assert_eq!(a[1].os_name, "ios");
        assert_eq!(a[1].user_id, "");
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("d1\n{oops\n", Format::JsonLines, "line 1"),
            (
                "{\"deviceId\":\"d1\"}\n{\"deviceID\":\"x\"}\n",
                Format::JsonLines,
                "line 2",
            ),
            (
                "d1\nd1\n",
                Format::Csv,
                "line 2: deviceId d1 is listed twice",
            ),
            (
                "d1\n\"d2,u\n",
                Format::Csv,
                "line 2: a quoted field is not closed",
            ),
            ("a,b,c,d,e,f,g\n", Format::Csv, "line 1: 7 fields"),
            ("deviceId,color\n", Format::Csv, "line 1: unknown column"),
            ("# nothing\n\n", Format::Csv, "no device"),
            (",u1\n", Format::Csv, "line 1: the deviceId is empty"),
        ];
        for (text, format, want) in cases {
            let e = parse(text, format).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_format_is_sniffed_without_a_known_extension() {
        assert_eq!(
            format_of(Path::new("x.txt"), "\n{\"deviceId\":\"a\"}"),
            Format::JsonLines
        );
        assert_eq!(format_of(Path::new("x"), "a,b"), Format::Csv);
        assert_eq!(format_of(Path::new("x.csv"), "{"), Format::Csv);
    }
}
