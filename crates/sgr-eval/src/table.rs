//! Tables rendered as Markdown (columns padded so the source reads as a table too) and as CSV.

use serde::{Deserialize, Serialize};

/// A table: a header row and rows of already formatted cells.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// An accuracy in `[0, 1]` as a percentage with one decimal, the paper's format (`0.448` → `44.8`).
pub fn fmt_pct(acc: f64) -> String {
    if acc.is_finite() {
        format!("{:.1}", 100.0 * acc)
    } else {
        "–".into()
    }
}

impl Table {
    pub fn new(header: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are left empty, extra cells are an error of the caller (panics in debug).
    pub fn push(&mut self, row: impl IntoIterator<Item = impl Into<String>>) {
        let mut row: Vec<String> = row.into_iter().map(Into::into).collect();
        debug_assert!(row.len() <= self.header.len(), "row longer than header");
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
    }

    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        w.iter().map(|&x| x.max(3)).collect()
    }

    /// Whether column `i` holds numbers only (ignoring Markdown emphasis and `(!)` marks).
    fn numeric(&self, i: usize) -> bool {
        i > 0
            && self.rows.iter().all(|r| {
                let c = r[i].replace("**", "").replace("(!)", "");
                let c = c.trim();
                c.is_empty() || c == "–" || c.parse::<f64>().is_ok()
            })
    }

    /// GitHub-flavoured Markdown; numeric columns are right-aligned, the others left-aligned.
    pub fn to_markdown(&self) -> String {
        let w = self.widths();
        let right: Vec<bool> = (0..w.len()).map(|i| self.numeric(i)).collect();
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, c) in cells.iter().enumerate() {
                let pad = w[i] - c.chars().count();
                if !right[i] {
                    s += &format!(" {c}{} |", " ".repeat(pad));
                } else {
                    s += &format!(" {}{c} |", " ".repeat(pad));
                }
            }
            s + "\n"
        };
        let mut out = line(&self.header);
        out += "|";
        for (i, &wi) in w.iter().enumerate() {
            if !right[i] {
                out += &format!(":{}|", "-".repeat(wi + 1));
            } else {
                out += &format!("{}:|", "-".repeat(wi + 1));
            }
        }
        out += "\n";
        for row in &self.rows {
            out += &line(row);
        }
        out
    }

    /// RFC 4180 CSV (cells quoted where they hold a comma, quote or line break).
    pub fn to_csv(&self) -> String {
        let cell = |c: &String| {
            if c.contains([',', '"', '\n']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        };
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            out += &row.iter().map(cell).collect::<Vec<_>>().join(",");
            out += "\n";
        }
        out
    }
}
