//! Plain-text tables for `tern ctl`: left-aligned columns two spaces apart, a header row.

/// Renders `rows` under `headers`. Control characters in cells (client ids and payloads are
/// anyone's bytes) are shown as '?', so a cell cannot move the cursor or break a line.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let clean =
        |cell: &str| -> String { cell.chars().map(|c| if c.is_control() { '?' } else { c }).collect() };
    let rows: Vec<Vec<String>> = rows.iter().map(|row| row.iter().map(|c| clean(c)).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let rows =
            vec![vec!["a-long-id".to_owned(), "yes".to_owned()], vec!["b\n".to_owned(), "no".to_owned()]];
        assert_eq!(
            render(&["CLIENT ID", "CONNECTED"], &rows),
            "CLIENT ID  CONNECTED\na-long-id  yes\nb?         no\n"
        );
    }
}
