//! READMEs (`io.atcr.repo.page` `description`) are markdown written by whoever owns the
//! repository: untrusted. They are rendered with pulldown-cmark and then passed through an
//! allowlist sanitizer (ammonia), so raw `<script>`, event-handler attributes, `style`
//! attributes and `javascript:` (or any non-http(s)/mailto) URLs never reach the page.
//! Headings are shifted down one level: the page's own `<h1>` is the repository name.

use std::collections::HashSet;
use std::sync::LazyLock;

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

/// READMEs larger than this are cut (a page is not a file viewer).
const MAX_README_BYTES: usize = 256 * 1024;

static SANITIZER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::default();
    builder
        .url_schemes(HashSet::from(["http", "https", "mailto"]))
        .link_rel(Some("nofollow noopener noreferrer"))
        // Relative links would resolve against atcr's own pages, not the project's site.
        .url_relative(ammonia::UrlRelative::Deny)
        .add_tags(["input"])
        // task-list checkboxes only: no other input type, and never editable
        .add_tag_attributes("input", ["checked"])
        .add_tag_attribute_values("input", "type", ["checkbox"])
        .set_tag_attribute_value("input", "disabled", "")
        .add_allowed_classes("code", LANGUAGE_CLASSES)
        .add_tag_attributes("td", ["align"])
        .add_tag_attributes("th", ["align"]);
    builder
});

/// `language-*` classes pulldown-cmark puts on fenced code; harmless, and kept for styling.
const LANGUAGE_CLASSES: [&str; 16] = [
    "language-sh",
    "language-bash",
    "language-shell",
    "language-console",
    "language-dockerfile",
    "language-yaml",
    "language-yml",
    "language-json",
    "language-toml",
    "language-rust",
    "language-go",
    "language-python",
    "language-js",
    "language-javascript",
    "language-text",
    "language-ini",
];

fn shifted(level: HeadingLevel) -> HeadingLevel {
    match level {
        HeadingLevel::H1 => HeadingLevel::H2,
        HeadingLevel::H2 => HeadingLevel::H3,
        HeadingLevel::H3 => HeadingLevel::H4,
        HeadingLevel::H4 => HeadingLevel::H5,
        HeadingLevel::H5 | HeadingLevel::H6 => HeadingLevel::H6,
    }
}

/// Markdown → sanitized HTML, safe to insert into a page as is.
pub fn render_readme(markdown: &str) -> String {
    let mut end = markdown.len().min(MAX_README_BYTES);
    while !markdown.is_char_boundary(end) {
        end -= 1;
    }
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_GFM;
    let events = Parser::new_ext(&markdown[..end], options).map(|event| match event {
        Event::Start(Tag::Heading { level, id, classes, attrs }) => {
            Event::Start(Tag::Heading { level: shifted(level), id, classes, attrs })
        }
        Event::End(TagEnd::Heading(level)) => Event::End(TagEnd::Heading(shifted(level))),
        other => other,
    });
    let mut unsafe_html = String::with_capacity(end + end / 2);
    pulldown_cmark::html::push_html(&mut unsafe_html, events);
    SANITIZER.clean(&unsafe_html).to_string()
}

/// Whether a URL from an annotation or record may become a link: absolute http(s) only.
pub fn is_web_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://"))
        && url.len() <= 2048
        && !url.chars().any(|c| c.is_control() || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_renders_with_headings_shifted() {
        let html = render_readme("# Hello\n\nSome *text* and `code`.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n");
        assert!(html.contains("<h2>Hello</h2>"), "{html}");
        assert!(html.contains("<em>text</em>"), "{html}");
        assert!(html.contains("<table>"), "{html}");
        assert!(!html.contains("<h1"), "{html}");
    }

    #[test]
    fn hostile_readmes_render_inert() {
        let hostile = concat!(
            "<script>window.__pwned = 1; alert(1)</script>\n\n",
            "<img src=x onerror=\"window.__pwned = 2; alert(2)\">\n\n",
            "[click](javascript:alert(3))\n\n",
            "<a href=\"JaVaScRiPt:alert(4)\">upper</a>\n\n",
            "<div style=\"position:fixed\" onclick=\"alert(5)\">styled</div>\n\n",
            "<iframe src=\"https://evil.example\"></iframe>\n\n",
            "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCg2KTwvc2NyaXB0Pg==)\n\n",
            "<svg><script>alert(7)</script></svg>\n\n",
            "<form action=\"https://evil.example\"><input type=\"text\" name=\"password\"></form>\n",
        );
        let html = render_readme(hostile);
        let lower = html.to_ascii_lowercase();
        for forbidden in ["<script", "onerror", "onclick", "javascript:", "style=", "<iframe", "data:", "<svg", "<form"]
        {
            assert!(!lower.contains(forbidden), "{forbidden} survived: {html}");
        }
        assert!(!lower.contains(r#"type="text""#), "{html}");
        assert!(html.contains("click"), "link text stays: {html}");
    }

    #[test]
    fn links_get_rel_and_only_web_and_mail_schemes() {
        let html = render_readme("[site](https://example.com) [mail](mailto:a@example.com) [rel](docs/x.md)");
        assert!(html.contains(r#"href="https://example.com""#), "{html}");
        assert!(html.contains(r#"rel="nofollow noopener noreferrer""#), "{html}");
        assert!(html.contains(r#"href="mailto:a@example.com""#), "{html}");
        assert!(!html.contains("docs/x.md"), "relative links are dropped: {html}");
    }

    #[test]
    fn task_lists_and_code_classes_survive() {
        let html = render_readme("- [x] done\n\n```sh\necho hi\n```\n");
        assert!(html.contains(r#"type="checkbox""#), "{html}");
        assert!(html.contains(r#"class="language-sh""#), "{html}");
    }

    #[test]
    fn only_absolute_web_urls_become_links() {
        assert!(is_web_url("https://github.com/a/b"));
        assert!(is_web_url("http://example.com"));
        assert!(!is_web_url("javascript:alert(1)"));
        assert!(!is_web_url("JAVASCRIPT:alert(1)"));
        assert!(!is_web_url("//evil.example"));
        assert!(!is_web_url("https://a.example/\nx"));
        assert!(!is_web_url("data:text/html,hi"));
    }
}
