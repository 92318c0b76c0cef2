//! A Markdown table: a header row, right-aligned numeric columns, rows of
//! cells (cells lose their `|` and line breaks so the table stays a table).

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table under construction.
#[derive(Debug, Clone, Default)]
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            columns: columns.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra ones dropped.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut r: Vec<String> = cells
            .into_iter()
            .map(|c| c.into().replace('|', "\\|").replace('\n', " "))
            .collect();
        r.resize(self.columns.len(), String::new());
        self.rows.push(r);
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// No rows yet.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as Markdown (one line per row, ending with a newline).
    pub fn to_markdown(&self) -> String {
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut s = String::from("|");
            for c in cells {
                s.push(' ');
                s.push_str(c);
                s.push_str(" |");
            }
            s.push('\n');
            s
        };
        let mut out = line(&mut self.columns.iter().map(|(n, _)| n.as_str()));
        out.push_str(&line(&mut self.columns.iter().map(|(_, a)| match a {
            Align::Left => "---",
            Align::Right => "---:",
        })));
        for r in &self.rows {
            out.push_str(&line(&mut r.iter().map(String::as_str)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown() {
        let mut t = Table::new(&[("path", Align::Left), ("p50", Align::Right)]);
        assert!(t.is_empty());
        t.row(["direct", "1 ms"]);
        t.row(["a|b"]);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.to_markdown(),
            "| path | p50 |\n| --- | ---: |\n| direct | 1 ms |\n| a\\|b |  |\n"
        );
    }
}
