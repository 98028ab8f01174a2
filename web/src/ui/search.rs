//! The search page: a form that works without JavaScript (GET `/search?q=&sort=&page=`), made
//! live by htmx (results replace `#search-results` while typing, and the address bar follows),
//! filter chips that toggle common filters, a help popover listing the query syntax, and
//! pagination. With the `HX-Request` header only the results fragment is rendered.

use atcr_query::search::{SearchHit, SearchSort};
use atcr_query::search::{SearchResponse, SyntaxHelp};
use maud::{Markup, html};

use super::components::{RenderContext, platform_badges, repo_meta, visible_platforms};
use super::format::{identicon, owner_name, query_string, repository_url, thousands};
use super::layout::{self, Page, Section, search_icon};

/// Filters offered as one-click chips (each toggles its term in the query).
const CHIPS: [(&str, &str); 6] = [
    ("is:multiarch", "Multi-arch"),
    ("os:linux", "Linux"),
    ("arch:amd64", "amd64"),
    ("arch:arm64", "arm64"),
    ("tag:latest", "Has latest"),
    ("stars:>0", "Starred"),
];

fn sort_label(sort: SearchSort) -> &'static str {
    match sort {
        SearchSort::Relevance => "Best match",
        SearchSort::Recent => "Recently pushed",
        SearchSort::Stars => "Most stars",
        SearchSort::Size => "Largest",
        SearchSort::Name => "Name",
    }
}

/// The query with `term` added, or removed when it is already one of its words.
pub fn toggle_term(query: &str, term: &str) -> (String, bool) {
    let words: Vec<&str> = query.split_whitespace().collect();
    if words.iter().any(|word| word.eq_ignore_ascii_case(term)) {
        let kept: Vec<&str> = words.into_iter().filter(|word| !word.eq_ignore_ascii_case(term)).collect();
        (kept.join(" "), true)
    } else if words.is_empty() {
        (term.to_string(), false)
    } else {
        (format!("{} {term}", words.join(" ")), false)
    }
}

fn search_url(query: &str, sort: SearchSort, page: usize) -> String {
    let mut pairs: Vec<(&str, String)> = vec![("q", query.to_string())];
    if sort != SearchSort::Relevance {
        pairs.push(("sort", sort.as_str().to_string()));
    }
    if page > 1 {
        pairs.push(("page", page.to_string()));
    }
    format!("/search?{}", query_string(&pairs))
}

fn hit_card(hit: &SearchHit, context: &RenderContext) -> Markup {
    let owner = owner_name(&hit.did, hit.handle.as_deref());
    let multi_arch = visible_platforms(&hit.platforms).count() > 1;
    html! {
        article.card {
            div.body {
                div.card-title {
                    (identicon(&hit.did, 28))
                    h3 { a href=(repository_url(owner, &hit.repository)) { span.owner { (owner) " / " } (hit.repository) } }
                }
                @match hit.description.as_deref().filter(|text| !text.trim().is_empty()) {
                    Some(description) => p.description { (description) },
                    None => p.description.muted { "No description" },
                }
                @if !hit.platforms.is_empty() { (platform_badges(&hit.platforms, multi_arch)) }
            }
            (repo_meta(hit.stars, hit.tag_count, hit.size, hit.last_push.as_deref(), context))
            @if !hit.tags.is_empty() {
                ul.badges.tags aria-label="Tags" {
                    @for tag in hit.tags.iter().take(6) {
                        li { span.badge.tag { (tag) } }
                    }
                    @if hit.tag_count > 6 { li { span.badge { "+" (hit.tag_count - 6) " more" } } }
                }
            }
        }
    }
}

/// Page numbers to link: first, last, and two either side of the current one.
fn page_window(current: usize, pages: usize) -> Vec<Option<usize>> {
    let mut shown: Vec<Option<usize>> = Vec::new();
    for page in 1..=pages {
        let near = page + 2 >= current && page <= current + 2;
        if page == 1 || page == pages || near {
            shown.push(Some(page));
        } else if shown.last().is_some_and(Option::is_some) {
            shown.push(None);
        }
    }
    shown
}

fn pagination(response: &SearchResponse) -> Markup {
    let (page, pages) = (response.page, response.pages);
    html! {
        @if pages > 1 {
            nav aria-label="Pagination" {
                ul.pagination {
                    li {
                        @if page > 1 {
                            a href=(search_url(&response.query, response.sort, page - 1)) rel="prev" { "← Previous" }
                        } @else {
                            span.disabled aria-disabled="true" { "← Previous" }
                        }
                    }
                    @for entry in page_window(page, pages) {
                        li {
                            @match entry {
                                Some(number) if number == page => span aria-current="page" { (number) },
                                Some(number) => a href=(search_url(&response.query, response.sort, number)) aria-label=(format!("Page {number}")) { (number) },
                                None => span.disabled aria-hidden="true" { "…" },
                            }
                        }
                    }
                    li {
                        @if page < pages {
                            a href=(search_url(&response.query, response.sort, page + 1)) rel="next" { "Next →" }
                        } @else {
                            span.disabled aria-disabled="true" { "Next →" }
                        }
                    }
                }
            }
        }
    }
}

/// Chips that toggle common filters in the current query (re-rendered with every result set).
fn filter_chips(response: &SearchResponse) -> Markup {
    let query = response.query.as_str();
    html! {
        ul.chips aria-label="Quick filters" {
            li.label aria-hidden="true" { "Filters:" }
            @for (term, label) in CHIPS {
                @let (toggled, active) = toggle_term(query, term);
                li {
                    a.chip href=(search_url(&toggled, response.sort, 1)) aria-current=[active.then_some("true")]
                        title=(if active { format!("Remove {term}") } else { format!("Add {term}") }) {
                        @if active { span aria-hidden="true" { "✓ " } }
                        (label)
                        span.visually-hidden { " (" (term) ")" }
                    }
                }
            }
        }
    }
}

fn page_title(query: &str) -> String {
    if query.trim().is_empty() { "Search · atcr".to_string() } else { format!("{query} · Search · atcr") }
}

/// What replaces `#search-results` on a live search: the document title (htmx applies it) and
/// the results.
pub fn results_fragment(response: &SearchResponse, context: &RenderContext) -> Markup {
    html! {
        title { (page_title(&response.query)) }
        (results_body(response, context))
    }
}

/// Filter chips, the count, problems with the query, hits, pagination.
fn results_body(response: &SearchResponse, context: &RenderContext) -> Markup {
    let noun = if response.total == 1 { "repository" } else { "repositories" };
    html! {
        (filter_chips(response))
        div.results-head {
            p role="status" {
                @if response.total == 0 {
                    "No repositories match."
                } @else {
                    strong { (thousands(response.total)) } " " (noun)
                    @if response.pages > 1 { " · page " (response.page) " of " (response.pages) }
                }
            }
            p.muted { "Sorted by " (sort_label(response.sort).to_lowercase()) }
        }
        @if !response.errors.is_empty() || !response.warnings.is_empty() {
            ul.problems aria-label="Problems with the query" {
                @for problem in &response.errors {
                    li.badge.warn { "Ignored " code { (problem.fragment) } ": " (problem.message) }
                }
                @for problem in &response.warnings {
                    li.badge { code { (problem.fragment) } ": " (problem.message) }
                }
            }
        }
        h2.visually-hidden { "Results" }
        @if response.hits.is_empty() {
            p.empty { "Try fewer words or filters, or open the search syntax help." }
        } @else {
            ol.results {
                @for hit in &response.hits { li { (hit_card(hit, context)) } }
            }
        }
        (pagination(response))
    }
}

fn help_popover(help: &[SyntaxHelp], sort: SearchSort) -> Markup {
    html! {
        details.help {
            summary { "Search syntax" }
            div.help-body {
                p { "Combine words, " code { "\"phrases\"" } ", " code { "-excluded" } " words and filters. Examples are links." }
                table {
                    caption.visually-hidden { "Search syntax" }
                    thead { tr { th scope="col" { "Syntax" } th scope="col" { "Finds" } th scope="col" { "Example" } } }
                    tbody {
                        @for entry in help {
                            tr {
                                th scope="row" { code { (entry.syntax) } }
                                td { (entry.meaning) }
                                td { a href=(search_url(entry.example, sort, 1)) { code { (entry.example) } } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The whole page (first load, links, no JavaScript).
pub fn page(response: &SearchResponse, help: &[SyntaxHelp], context: &RenderContext) -> Markup {
    let query = response.query.as_str();
    let body = html! {
        div.container.page.search-page {
            h1 { "Search" }
            form #search-form.search-form role="search" action="/search" method="get" {
                div.field.search-field-wrap {
                    label for="page-search" { "Search repositories" }
                    div.search-field {
                        (search_icon())
                        input #page-search type="search" name="q" value=(query)
                            placeholder="nginx arch:arm64 stars:>1" autocomplete="off" spellcheck="false"
                            aria-keyshortcuts="/" aria-describedby="search-syntax-hint"
                            hx-get="/search" hx-trigger="input changed delay:150ms, search"
                            hx-target="#search-results" hx-include="#search-form" hx-push-url="true"
                            hx-indicator="#search-form";
                    }
                }
                div.field {
                    label for="search-sort" { "Sort by" }
                    select #search-sort name="sort"
                        hx-get="/search" hx-trigger="change" hx-target="#search-results"
                        hx-include="#search-form" hx-push-url="true" {
                        @for sort in SearchSort::ALL {
                            option value=(sort.as_str()) selected[sort == response.sort] { (sort_label(sort)) }
                        }
                    }
                }
                button.button type="submit" { "Search" }
                span.search-progress aria-hidden="true" { "Searching…" }
            }
            p #search-syntax-hint.visually-hidden { "Supports filters such as user:, repo:, arch:, os:, tag:, stars: and is:multiarch; see Search syntax." }
            (help_popover(help, response.sort))
            div #search-results { (results_body(response, context)) }
        }
    };
    let title = if query.trim().is_empty() { "Search".to_string() } else { format!("{query} · Search") };
    debug_assert_eq!(format!("{title} · atcr"), page_title(query));
    layout::render(Page {
        title: &title,
        description: "Search container images published on the AT Protocol by name, owner, platform, tag and more.",
        section: Section::Search,
        query,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chips_toggle_their_term() {
        assert_eq!(toggle_term("", "is:multiarch"), ("is:multiarch".to_string(), false));
        assert_eq!(toggle_term("nginx", "arch:arm64"), ("nginx arch:arm64".to_string(), false));
        assert_eq!(toggle_term("nginx  arch:arm64 x", "arch:arm64"), ("nginx x".to_string(), true));
    }

    #[test]
    fn page_window_elides_far_pages() {
        assert_eq!(page_window(1, 3), vec![Some(1), Some(2), Some(3)]);
        assert_eq!(
            page_window(5, 10),
            vec![Some(1), None, Some(3), Some(4), Some(5), Some(6), Some(7), None, Some(10)]
        );
        assert_eq!(page_window(1, 1), vec![Some(1)]);
    }

    fn response(query: &str, total: u64, page: usize) -> SearchResponse {
        let hit = |repository: &str, platforms: &[&str]| SearchHit {
            did: "did:plc:alice".into(),
            handle: Some("alice.test".into()),
            repository: repository.into(),
            description: Some("<b>small</b> web server".into()),
            tags: vec!["latest".into(), "1.27".into()],
            tag_count: 9,
            platforms: platforms.iter().map(|platform| platform.to_string()).collect(),
            holds: vec![],
            last_push: Some("2025-03-01T10:00:00Z".into()),
            stars: 4,
            size: 2_000_000,
            manifests: 3,
            score: Some(1.0),
        };
        SearchResponse {
            query: query.into(),
            sort: SearchSort::Stars,
            page,
            per_page: 20,
            total,
            pages: (total as usize).div_ceil(20),
            hits: vec![hit("web/nginx-mini", &["linux/amd64", "linux/arm64"]), hit("hello", &["linux/amd64"])],
            filters: vec![],
            errors: vec![atcr_query::search::QueryProblem {
                fragment: "stars:lots".into(),
                message: "not a number".into(),
            }],
            warnings: vec![],
            took_us: 120,
        }
    }

    fn context() -> RenderContext {
        RenderContext {
            host: "registry.test".into(),
            now: super::super::format::parse_time("2025-03-04T10:00:00Z").unwrap(),
            live: None,
        }
    }

    #[test]
    fn the_page_has_a_live_form_chips_help_results_and_pagination() {
        let html = page(&response("nginx arch:arm64", 45, 2), atcr_query::search::help(), &context()).into_string();
        for expected in [
            "<h1>Search</h1>",
            r#"hx-get="/search""#,
            r#"hx-trigger="input changed delay:150ms, search""#,
            r#"hx-push-url="true""#,
            r#"<label for="page-search">"#,
            r#"<label for="search-sort">"#,
            r#"<option value="stars" selected>Most stars</option>"#,
            r#"role="search""#,
            "Search syntax",
            "is:multiarch",
            r#"aria-current="true""#,
            "/search?q=nginx&amp;sort=stars",
            "<strong>45</strong> repositories",
            "page 2 of 3",
            "&lt;b&gt;small&lt;/b&gt; web server",
            "+3 more",
            "stars:lots",
            r#"rel="prev""#,
            r#"rel="next""#,
            r#"<span aria-current="page">2</span>"#,
        ] {
            assert!(html.contains(expected), "missing {expected:?}:\n{html}");
        }
        assert_eq!(html.matches("<h1").count(), 1);
        assert!(!html.contains("style="));
        assert_eq!(html.matches("<title>").count(), 1, "the fragment's title is only for htmx swaps");
    }

    #[test]
    fn the_fragment_is_only_the_results() {
        let html = results_fragment(&response("hello", 1, 1), &context()).into_string();
        assert!(html.starts_with("<title>hello · Search · atcr</title>"), "{html}");
        assert!(!html.contains("<html") && !html.contains("<h1") && !html.contains("<header"), "{html}");
        assert!(html.contains("<strong>1</strong> repository"), "{html}");
        assert!(!html.contains("pagination"), "one page needs no pagination: {html}");
    }

    #[test]
    fn search_urls_encode_the_query() {
        assert_eq!(search_url("a b&c", SearchSort::Stars, 2), "/search?q=a%20b%26c&sort=stars&page=2");
        assert_eq!(search_url("", SearchSort::Relevance, 1), "/search?q=");
    }
}
