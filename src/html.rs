//! The one HTML escape, shared by the status page (`dashboard`) and the replay report
//! (`replay::html`). Both pages are also well-formed XML, so the escape writes no named entity but
//! the five XML predefines, and replaces what XML 1.0 forbids.

/// Escapes text for element content and for single- or double-quoted attribute values, in HTML and
/// XML alike. Control characters but newline and tab (which XML 1.0 forbids or a page does not
/// show; ids cannot hold them) become U+FFFD.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    escape_into(&mut out, s);
    out
}

/// [`escape`], appending to `out` (the status page's writer builds the page in one string).
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_quotes_and_controls() {
        assert_eq!(
            escape(r#"<script>alert('x')</script> & "q" ' % $ * ( )"#),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot; &#39; % $ * ( )"
        );
        assert_eq!(escape("a\u{0}b\u{7}c"), "a\u{fffd}b\u{fffd}c");
        assert_eq!(escape("plain-id_1.ü"), "plain-id_1.ü");
        assert_eq!(escape("&amp;"), "&amp;amp;");
    }

    #[test]
    fn newline_and_tab_stay_and_escape_into_appends() {
        assert_eq!(escape("a\nb\tc\r"), "a\nb\tc\u{fffd}");
        let mut out = String::from("<b>");
        escape_into(&mut out, "x<y");
        assert_eq!(out, "<b>x&lt;y");
    }
}
