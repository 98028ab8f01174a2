//! The page shell every UI page shares: `<head>` (meta description, OpenGraph, the hashed
//! stylesheet and scripts, the pre-paint theme script), the header with the search box and the
//! theme toggle, a skip link, landmarks and the footer.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::assets;
use super::components::LiveRegion;

/// Which top-level section a page belongs to (marks the nav link `aria-current`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Home,
    Search,
    Status,
    Other,
}

/// What one page puts into the shell.
pub struct Page<'a> {
    /// `<title>` before " · atcr", and `og:title`.
    pub title: &'a str,
    /// Meta description and `og:description` (plain text).
    pub description: &'a str,
    pub section: Section,
    /// Pre-fills the header search box (the search page shows its own instead).
    pub query: &'a str,
    pub body: Markup,
}

pub const SITE_NAME: &str = "atcr";
pub const TAGLINE: &str = "Container images on the AT Protocol";

/// The atcr mark: a box (an image layer) in a rounded square. Decorative.
pub fn logo() -> Markup {
    html! {
        svg viewBox="0 0 32 32" aria-hidden="true" focusable="false" {
            rect width="32" height="32" rx="7" fill="#1f6feb" {}
            path d="M16 6.5 25 11.2v9.6L16 25.5 7 20.8v-9.6z" fill="none" stroke="#fff" stroke-width="2.2" stroke-linejoin="round" {}
            path d="M7.4 11.4 16 16l8.6-4.6M16 16v9.2" fill="none" stroke="#fff" stroke-width="2.2" stroke-linejoin="round" {}
        }
    }
}

pub fn search_icon() -> Markup {
    html! {
        svg viewBox="0 0 16 16" aria-hidden="true" focusable="false" fill="currentColor" {
            path d="M10.68 11.74a6 6 0 1 1 1.06-1.06l3.04 3.04a.75.75 0 1 1-1.06 1.06zM11.5 7a4.5 4.5 0 1 0-9 0 4.5 4.5 0 0 0 9 0" {}
        }
    }
}

fn nav_link(href: &str, label: &str, current: bool) -> Markup {
    html! {
        li { a href=(href) aria-current=[current.then_some("page")] { (label) } }
    }
}

/// The header search form (GET /search; works without JavaScript).
pub fn header_search(query: &str) -> Markup {
    html! {
        form.header-search role="search" action="/search" method="get" {
            div.search-field {
                label.visually-hidden for="site-search" { "Search repositories" }
                (search_icon())
                input #site-search type="search" name="q" value=(query) placeholder="Search images"
                    autocomplete="off" spellcheck="false" aria-keyshortcuts="/";
                kbd aria-hidden="true" { "/" }
            }
        }
    }
}

/// What some pages add to the shell.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extras<'a> {
    /// `(title, href)` of the page's Atom feed: `<link rel="alternate">` in `<head>`.
    pub feed: Option<(&'a str, &'a str)>,
    /// The content updates live (the htmx SSE extension, `app.js` re-fetches it).
    pub live: Option<&'a LiveRegion>,
}

pub fn render(page: Page<'_>) -> Markup {
    render_with(page, Extras::default())
}

/// The page content, inside a live region when asked: a hidden listener of the event stream
/// (`hx-trigger="sse:message"`, nothing to request) and the region `app.js` re-fetches.
fn live_body(body: Markup, live: Option<&LiveRegion>) -> Markup {
    match live {
        None => body,
        Some(live) => html! {
            div.live hx-ext="sse" sse-connect=(live.events_url) data-live {
                span hidden hx-trigger="sse:message" {}
                div #live-region hx-get=(live.page_url) hx-select="#live-region" hx-target="this" hx-swap="outerHTML" hx-trigger="atcr:refresh" {
                    (body)
                }
            }
        },
    }
}

pub fn render_with(page: Page<'_>, extras: Extras<'_>) -> Markup {
    let full_title = if page.title == SITE_NAME {
        format!("{SITE_NAME} · {TAGLINE}")
    } else {
        format!("{} · {SITE_NAME}", page.title)
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (full_title) }
                meta name="description" content=(page.description);
                meta name="color-scheme" content="light dark";
                meta property="og:site_name" content=(SITE_NAME);
                meta property="og:type" content="website";
                meta property="og:title" content=(page.title);
                meta property="og:description" content=(page.description);
                meta name="twitter:card" content="summary";
                // htmx: no inline indicator styles (the CSP allows none), no eval, no scripts
                // from swapped HTML.
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0}"#;
                script { (PreEscaped(assets::THEME_SCRIPT)) }
                link rel="icon" href=(assets::url("favicon.svg")) type="image/svg+xml";
                link rel="stylesheet" href=(assets::url("app.css"));
                @if let Some((title, href)) = extras.feed {
                    link rel="alternate" type="application/atom+xml" title=(title) href=(href);
                }
                script src=(assets::url("htmx.min.js")) defer {}
                @if extras.live.is_some() {
                    script src=(assets::url("htmx-ext-sse.min.js")) defer {}
                }
                script src=(assets::url("app.js")) defer {}
            }
            body {
                a.skip-link href="#main" { "Skip to content" }
                header.site-header {
                    div.container {
                        a.brand href="/" {
                            (logo())
                            span { (SITE_NAME) }
                            small { "container registry" }
                        }
                        nav.site-nav aria-label="Main" {
                            ul {
                                (nav_link("/", "Explore", page.section == Section::Home))
                                (nav_link("/search", "Search", page.section == Section::Search))
                                (nav_link("/status", "Status", page.section == Section::Status))
                            }
                        }
                        @if page.section != Section::Search {
                            (header_search(page.query))
                        } @else {
                            div.header-spacer {}
                        }
                        button #theme-toggle.icon-button type="button" aria-pressed="false" aria-label="Dark mode" title="Toggle dark mode" {
                            svg.icon-moon viewBox="0 0 16 16" aria-hidden="true" focusable="false" fill="currentColor" {
                                path d="M9.6 1.6a.75.75 0 0 1 .78-.18 7 7 0 1 1-8.96 8.97.75.75 0 0 1 .96-.96 5.5 5.5 0 0 0 7.04-7.05.75.75 0 0 1 .18-.78m1.62 1.95a7 7 0 0 1-7.68 7.68 5.5 5.5 0 1 0 7.68-7.68" {}
                            }
                            svg.icon-sun viewBox="0 0 16 16" aria-hidden="true" focusable="false" fill="currentColor" {
                                path d="M8 12a4 4 0 1 1 0-8 4 4 0 0 1 0 8m0-1.5a2.5 2.5 0 1 0 0-5 2.5 2.5 0 0 0 0 5M8 0a.75.75 0 0 1 .75.75v1.5a.75.75 0 0 1-1.5 0V.75A.75.75 0 0 1 8 0m0 13a.75.75 0 0 1 .75.75v1.5a.75.75 0 0 1-1.5 0v-1.5A.75.75 0 0 1 8 13M2.34 2.34a.75.75 0 0 1 1.06 0l1.06 1.06a.75.75 0 0 1-1.06 1.06L2.34 3.4a.75.75 0 0 1 0-1.06m9.2 9.2a.75.75 0 0 1 1.06 0l1.06 1.06a.75.75 0 1 1-1.06 1.06l-1.06-1.06a.75.75 0 0 1 0-1.06M0 8a.75.75 0 0 1 .75-.75h1.5a.75.75 0 0 1 0 1.5H.75A.75.75 0 0 1 0 8m13 0a.75.75 0 0 1 .75-.75h1.5a.75.75 0 0 1 0 1.5h-1.5A.75.75 0 0 1 13 8M2.34 13.66a.75.75 0 0 1 0-1.06l1.06-1.06a.75.75 0 0 1 1.06 1.06L3.4 13.66a.75.75 0 0 1-1.06 0m9.2-9.2a.75.75 0 0 1 0-1.06l1.06-1.06a.75.75 0 1 1 1.06 1.06l-1.06 1.06a.75.75 0 0 1-1.06 0" {}
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    (live_body(page.body, extras.live))
                }
                footer.site-footer {
                    div.container {
                        p { (SITE_NAME) " — an AppView for ATCR, the ATProto Container Registry. Images are records in their owners' PDSs." }
                        nav aria-label="Footer" {
                            ul {
                                li { a href="/status" { "Ingest status" } }
                                li { a href="/install" { "Pull with your client" } }
                                li { a href="/api/docs" { "JSON API" } }
                                li { a href="/v2/_catalog" { "OCI catalog" } }
                                li { a href="/holds" { "Holds" } }
                                li { a href="/metrics" { "Metrics" } }
                            }
                        }
                    }
                }
                div #live-status.visually-hidden role="status" aria-live="polite" {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(title: &str) -> String {
        render(Page {
            title,
            description: "a <b>description</b>",
            section: Section::Home,
            query: "q\"x",
            body: html! { h1 { "Hello" } },
        })
        .into_string()
    }

    #[test]
    fn shell_has_landmarks_meta_and_hashed_assets() {
        let html = page("alice.test/hello");
        for expected in [
            r#"<html lang="en">"#,
            r##"<a class="skip-link" href="#main">"##,
            r#"<main id="main" tabindex="-1">"#,
            r#"role="search""#,
            r#"<label class="visually-hidden" for="site-search">"#,
            r#"property="og:title" content="alice.test/hello""#,
            r#"content="a &lt;b&gt;description&lt;/b&gt;""#,
            r#"value="q&quot;x""#,
            "<title>alice.test/hello · atcr</title>",
            r#"aria-pressed="false""#,
            &assets::url("app.css"),
            &assets::url("htmx.min.js"),
        ] {
            assert!(html.contains(expected), "missing {expected}: {html}");
        }
        assert!(html.contains(assets::THEME_SCRIPT), "the inline script must be byte-identical to its CSP hash");
        assert!(!html.contains("style="), "CSP forbids style attributes");
        assert_eq!(html.matches("<h1").count(), 1);
    }
}
