//! The one table renderer: a header in capitals, each column as wide as its widest cell, two
//! spaces between columns, no trailing blanks.

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names (shown in capitals).
    pub(crate) fn new(columns: &[&str]) -> Table {
        Table {
            header: columns.iter().map(|c| c.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row: one cell per column.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "one cell per column");
        self.rows.push(cells);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The header and the rows, one line each; nothing at all when there are no rows.
    pub(crate) fn render(&self) -> String {
        if self.rows.is_empty() {
            return String::new();
        }
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = Table::new(&["worker", "usd"]);
        assert_eq!(t.render(), "", "no rows, no header");
        t.row(vec!["w1".into(), "$1".into()]);
        t.row(vec!["a-long-name".into(), "".into()]);
        assert_eq!(
            t.render(),
            "WORKER       USD\nw1           $1\na-long-name\n"
        );
    }
}
