//! The browse pages as pure functions from `atcr_query::browse` view models to HTML: home, user,
//! repository, tag/manifest, and the error pages. No I/O here, so each is unit-tested with
//! hand-built models.

use atcr_query::browse::{
    HoldStatus, HomePage, LayerEntry, ManifestKind, ManifestPage, RepoCard, RepositoryPage, TagSummary, UserPage,
};
use maud::{Markup, PreEscaped, html};

use super::components::{
    RenderContext, copy_button, digest_with_copy, link_icon, platform_badges, pull_box, repo_card,
};
use super::format::{
    badge_url, client_label, human_size, identicon, manifest_url, owner_name, repository_feed_url, repository_url,
    short_digest, site_base_for_host, tag_url, thousands, time_element, user_feed_url, user_url,
};
use super::layout::{self, Extras, Page, Section, search_icon};
use super::markdown::{is_web_url, render_readme};

fn cards(repositories: &[RepoCard], context: &RenderContext, show_owner: bool) -> Markup {
    html! {
        ul.cards {
            @for card in repositories { li { (repo_card(card, context, show_owner)) } }
        }
    }
}

fn card_section(id: &str, title: &str, repositories: &[RepoCard], context: &RenderContext) -> Markup {
    html! {
        section.section aria-labelledby=(id) {
            div.section-head { h2 #(id) { (title) } }
            @if repositories.is_empty() {
                p.empty { "Nothing here yet." }
            } @else {
                (cards(repositories, context, true))
            }
        }
    }
}

fn pulled_cards(repositories: &[atcr_query::holds::PulledRepo]) -> Vec<RepoCard> {
    repositories.iter().map(|pulled| pulled.card.clone()).collect()
}

pub fn home(page: &HomePage, context: &RenderContext) -> Markup {
    let stats = &page.stats;
    let body = html! {
        div.hero {
            div.container {
                h1 { (layout::TAGLINE) }
                p.lead {
                    "Browse and pull container images published as ATProto records. "
                    "Every image here lives in its owner's PDS; atcr follows the network and serves them with the OCI pull API."
                }
                form.hero-search role="search" action="/search" method="get" {
                    div.search-field {
                        label.visually-hidden for="home-search" { "Search repositories" }
                        (search_icon())
                        input #home-search type="search" name="q" placeholder="Search by name, owner, description, platform…" autocomplete="off" spellcheck="false";
                    }
                    button.button type="submit" { "Search" }
                }
                dl.stats aria-label="Registry statistics" {
                    div { dt { "Repositories" } dd { (thousands(stats.repositories)) } }
                    div { dt { "Images" } dd { (thousands(stats.manifests)) } }
                    div { dt { "Tags" } dd { (thousands(stats.tags)) } }
                    div { dt { "Publishers" } dd { (thousands(stats.users)) } }
                    div { dt { "Stars" } dd { (thousands(stats.stars)) } }
                }
            }
        }
        div.container.page {
            (card_section("recent", "Recently pushed", &page.recent, context))
            (card_section("starred", "Most starred", &page.most_starred, context))
            (card_section("new", "New repositories", &page.new_repositories, context))
            @if !page.most_pulled.is_empty() {
                (card_section("popular", "Most pulled", &pulled_cards(&page.most_pulled), context))
            }
            @if !page.trending.is_empty() {
                (card_section("trending", "Trending this week", &pulled_cards(&page.trending), context))
            }
        }
    };
    let description = format!(
        "{} repositories and {} images published on the AT Protocol, ready to pull.",
        thousands(stats.repositories),
        thousands(stats.manifests)
    );
    layout::render_with(
        Page { title: layout::SITE_NAME, description: &description, section: Section::Home, query: "", body },
        Extras { feed: None, live: context.live.as_ref() },
    )
}

pub fn user(page: &UserPage, context: &RenderContext) -> Markup {
    let name = owner_name(&page.did, page.handle.as_deref());
    let body = html! {
        div.container {
            div.profile {
                (identicon(&page.did, 88))
                div {
                    h1 { (name) }
                    div.did.muted {
                        @if page.handle.is_some() { code { (page.did) } (copy_button(&page.did, "DID", true)) }
                        @if !page.handle_valid { span.badge.warn { "handle not verified" } }
                        @if !page.active { span.badge.warn { "account inactive" } }
                    }
                }
            }
            dl.stats aria-label="Statistics" {
                div { dt { "Repositories" } dd { (thousands(page.repository_count)) } }
                div { dt { "Images" } dd { (thousands(page.image_count)) } }
                div { dt { "Stars received" } dd { (thousands(page.stars_received)) } }
                div { dt { "Joined" } dd {
                    @match &page.joined { Some(at) => (time_element(at, context.now)), None => "unknown" }
                } }
            }
            section.section aria-labelledby="repositories" {
                div.section-head { h2 #repositories { "Repositories" } }
                @if page.repositories.is_empty() {
                    p.empty { (name) " has no repositories." }
                } @else {
                    (cards(&page.repositories, context, false))
                }
            }
            @if page.pds_endpoint.is_some() || page.default_hold.is_some() {
                section.section aria-labelledby="about" {
                    h2 #about { "About" }
                    dl.facts.wide {
                        @if let Some(pds) = &page.pds_endpoint { dt { "PDS" } dd { code { (pds) } } }
                        @if let Some(hold) = &page.default_hold { dt { "Default hold" } dd { (hold_cell(hold, page.default_hold_status.as_ref())) } }
                        dt { "Pull client" } dd { (client_label(&page.oci_client)) }
                    }
                }
            }
        }
    };
    let description = format!(
        "{name}: {} repositories, {} images, {} stars received on atcr.",
        thousands(page.repository_count),
        thousands(page.image_count),
        thousands(page.stars_received)
    );
    let feed = user_feed_url(name);
    let feed_title = format!("Tag changes of {name}");
    layout::render_with(
        Page { title: name, description: &description, section: Section::Other, query: "", body },
        Extras { feed: Some((&feed_title, &feed)), live: None },
    )
}

/// The repository's Atom feed and its README badge, with the badge's Markdown to copy.
fn follow_panel(owner: &str, repository: &str, newest_tag: Option<&str>, context: &RenderContext) -> Markup {
    let base = site_base_for_host(&context.host);
    let page = format!("{base}{}", repository_url(owner, repository));
    let badge = badge_url(owner, repository, "latest");
    let markdown = format!("[![latest]({base}{badge})]({page})");
    let alt = match newest_tag {
        Some(tag) => format!("Badge: latest tag {tag}"),
        None => "Badge: no tags yet".to_string(),
    };
    html! {
        section.panel aria-labelledby="follow-title" {
            h2 #follow-title { "Follow and embed" }
            p { a href=(repository_feed_url(owner, repository)) type="application/atom+xml" { "Atom feed of tag changes" } }
            p { img src=(badge) alt=(alt) height="20"; }
            div.pull {
                code.break { (markdown) }
                (copy_button(&markdown, "badge Markdown", true))
            }
        }
    }
}

/// The tag a repository page offers to pull: `latest` when there is one, else the first listed.
fn default_tag(tags: &[TagSummary]) -> Option<&TagSummary> {
    tags.iter().find(|tag| tag.name == "latest").or_else(|| tags.first())
}

/// Annotation values are text; links only for absolute http(s) URLs, with rel set.
fn annotation_value(value: &str) -> Markup {
    html! {
        @if is_web_url(value) {
            a href=(value) rel="nofollow noopener noreferrer" { (value) }
        } @else {
            (value)
        }
    }
}

fn annotations_section(annotations: &std::collections::BTreeMap<String, String>) -> Markup {
    html! {
        @if !annotations.is_empty() {
            section.section aria-labelledby="annotations-title" {
                h2 #annotations-title { "Annotations" }
                div.table-wrap { table.data.annotations {
                    thead { tr { th scope="col" { "Key" } th scope="col" { "Value" } } }
                    tbody {
                        @for (key, value) in annotations {
                            tr { th scope="row" { code.break { (key) } } td.break { (annotation_value(value)) } }
                        }
                    }
                } }
            }
        }
    }
}

fn owner_crumbs(did: &str, owner: &str, repository: &str, link_repository: bool, suffix: Option<Markup>) -> Markup {
    html! {
        div.crumbs {
            (identicon(did, 40))
            h1 {
                span.owner { a href=(user_url(owner)) { (owner) } }
                span.sep aria-hidden="true" { "/" }
                span.visually-hidden { " / " }
                @if link_repository { a href=(repository_url(owner, repository)) { (repository) } } @else { (repository) }
                @if let Some(suffix) = suffix { (suffix) }
            }
        }
    }
}

fn tags_table(page: &RepositoryPage, owner: &str, context: &RenderContext) -> Markup {
    html! {
        div.table-wrap {
            table.data {
                caption.visually-hidden { "Tags of " (page.repository) }
                thead { tr {
                    th scope="col" { "Tag" }
                    th scope="col" { "Platforms" }
                    th scope="col" class="num" { "Size" }
                    th.hide-sm scope="col" { "Digest" }
                    th.hide-sm scope="col" { "Updated" }
                    th scope="col" { "Vulnerabilities" }
                } }
                tbody {
                    @for (index, tag) in page.tags.iter().enumerate() {
                        // The next older scanned tag, to compare this one with (tags are newest first).
                        @let older = tag.scan.as_ref().and(page.tags[index + 1..].iter().find(|older| older.scan.is_some() && older.digest != tag.digest));
                        tr {
                            th scope="row" { a.mono href=(tag_url(owner, &page.repository, &tag.name)) { (tag.name) } }
                            td { (platform_badges(&tag.platforms, tag.multi_arch)) }
                            td.num { (tag.size.map(human_size).unwrap_or_default()) }
                            td.hide-sm { a.mono href=(manifest_url(owner, &page.repository, &tag.digest)) title=(tag.digest) { (short_digest(&tag.digest)) } }
                            td.nowrap.hide-sm { @if let Some(at) = &tag.updated_at { (time_element(at, context.now)) } }
                            td {
                                (super::scans::severity_badges(tag.scan.as_ref(), &super::scans::vulnerabilities_url(owner, &page.repository, &tag.name)))
                                @if let Some(older) = older {
                                    " " a.compare-link href=(super::scans::compare_url(owner, &page.repository, &older.name, &tag.name)) title={ "What changed since " (older.name) } { "vs " (older.name) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The repository page, with a section of recent tag moves (rendered by `ui::history`) and a
/// link to the full timeline when `history` is given.
#[cfg(test)]
pub fn repository_with_history(page: &RepositoryPage, context: &RenderContext, history: Option<Markup>) -> Markup {
    repository_with_sections(page, context, history, None)
}

/// The repository page with the pulls-and-pushes section (`holds.rs`) after the tags, when given.
pub fn repository_with_sections(
    page: &RepositoryPage,
    context: &RenderContext,
    history: Option<Markup>,
    analytics: Option<Markup>,
) -> Markup {
    let owner = owner_name(&page.did, page.handle.as_deref());
    let mut platforms: Vec<String> = page.tags.iter().flat_map(|tag| tag.platforms.iter().cloned()).collect();
    platforms.sort();
    platforms.dedup();
    let multi_arch = page.tags.iter().any(|tag| tag.multi_arch);
    let pull_tag = default_tag(&page.tags);
    let links: Vec<(&str, &str)> =
        [("Source", page.source_url.as_deref()), ("Documentation", page.documentation_url.as_deref())]
            .into_iter()
            .filter_map(|(label, url)| url.filter(|url| is_web_url(url)).map(|url| (label, url)))
            .collect();
    let body = html! {
        div.repo-head {
            div.container {
                (owner_crumbs(&page.did, owner, &page.repository, false, None))
                @if let Some(description) = page.description.as_deref().filter(|text| !text.trim().is_empty()) {
                    p.description { (description) }
                }
                @if !platforms.is_empty() { (platform_badges(&platforms, multi_arch)) }
            }
        }
        div.container.repo-layout {
            div {
                nav aria-label="Repository sections" {
                    ul.tabs {
                        li { a href="#overview" { "Overview" } }
                        li { a href="#tags" { "Tags" span.count { (page.tags.len()) } } }
                        @if history.is_some() { li { a href="#history" { "History" } } }
                    }
                }
                section #overview aria-labelledby="overview-title" {
                    h2.visually-hidden #overview-title { "Overview" }
                    @match page.readme.as_deref().filter(|text| !text.trim().is_empty()) {
                        Some(readme) => div.markdown { (PreEscaped(render_readme(readme))) },
                        None => p.empty { "This repository has no README yet." },
                    }
                }
                section.section #tags aria-labelledby="tags-title" {
                    div.section-head { h2 #tags-title { "Tags" } }
                    @if page.tags.is_empty() {
                        p.empty { "No tags. Images can still be pulled by digest." }
                    } @else {
                        (tags_table(page, owner, context))
                    }
                }
                @if let Some(analytics) = &analytics { (analytics) }
                @if let Some(history) = &history {
                    section.section #history aria-labelledby="history-title" {
                        div.section-head {
                            h2 #history-title { "Tag history" }
                            a href=(format!("{}/-/history", repository_url(owner, &page.repository))) { "Full history" }
                        }
                        (history)
                    }
                }
                (annotations_section(&page.annotations))
            }
            aside aria-label="Repository details" {
                section.panel aria-labelledby="pull-title" {
                    h2 #pull-title { "Pull this image" }
                    @match pull_tag {
                        Some(tag) => {
                            (pull_box(&page.oci_client, &format!("{}/{}:{}", context.host, page.pull_name, tag.name)))
                            p.pull-note { "With " (client_label(&page.oci_client)) ", the owner's preferred client. Tag " code { (tag.name) } "." }
                        }
                        None => p.muted { "No tags to pull yet." },
                    }
                }
                section.panel aria-labelledby="about-title" {
                    h2 #about-title { "About" }
                    dl.facts {
                        dt { "Owner" } dd { a href=(user_url(owner)) { (owner) } }
                        dt { "Stars" } dd { (thousands(page.stars)) }
                        dt { "Tags" } dd { (thousands(page.tags.len() as u64)) }
                        dt { "Images" } dd { (thousands(page.manifests)) }
                        dt { "Size" } dd { (human_size(page.size)) }
                        @if let Some(at) = &page.last_push { dt { "Last push" } dd { (time_element(at, context.now)) } }
                    }
                }
                (follow_panel(owner, &page.repository, page.tags.first().map(|tag| tag.name.as_str()), context))
                @if !links.is_empty() {
                    section.panel aria-labelledby="links-title" {
                        h2 #links-title { "Links" }
                        ul.links {
                            @for (label, url) in &links {
                                li { a href=(url) rel="nofollow noopener noreferrer" { (link_icon()) span { (label) } } }
                            }
                        }
                    }
                }
            }
        }
    };
    let title = format!("{owner}/{}", page.repository);
    let description = match page.description.as_deref().filter(|text| !text.trim().is_empty()) {
        Some(text) => text.chars().take(200).collect(),
        None => format!("{title}: {} tags, {} stars on atcr.", page.tags.len(), page.stars),
    };
    let feed = repository_feed_url(owner, &page.repository);
    let feed_title = format!("Tag changes of {title}");
    layout::render_with(
        Page { title: &title, description: &description, section: Section::Other, query: "", body },
        Extras { feed: Some((&feed_title, &feed)), live: context.live.as_ref() },
    )
}

fn layer_rows(layers: &[LayerEntry]) -> Markup {
    html! {
        @for (index, layer) in layers.iter().enumerate() {
            tr {
                td.num { (index + 1) }
                td { span.digest { code title=(layer.digest) { (short_digest(&layer.digest)) } (copy_button(&layer.digest, "layer digest", true)) } }
                td { code.break { (layer.media_type.as_deref().unwrap_or("—")) } }
                td.num { (layer.size.map(human_size).unwrap_or_default()) }
            }
        }
    }
}

#[cfg(test)]
pub fn manifest(page: &ManifestPage, context: &RenderContext) -> Markup {
    manifest_with(page, context, None)
}

/// The manifest page with the layers section (`layers.rs`) after the layer list, when given.
pub fn manifest_with(page: &ManifestPage, context: &RenderContext, layers: Option<Markup>) -> Markup {
    let owner = owner_name(&page.did, page.handle.as_deref());
    let reference_label = match &page.reference_tag {
        Some(tag) => format!(":{tag}"),
        None => format!("@{}", short_digest(&page.digest)),
    };
    let by_tag = page.reference_tag.as_ref().map(|tag| format!("{}/{}:{tag}", context.host, page.pull_name));
    let by_digest = format!("{}/{}@{}", context.host, page.pull_name, page.digest);
    let is_index = matches!(page.kind, ManifestKind::Index { .. });
    let body = html! {
        div.repo-head {
            div.container {
                (owner_crumbs(&page.did, owner, &page.repository, true, Some(html! { span.mono { (reference_label) } })))
                ul.badges.section-badges aria-label="Kind" {
                    li { span.badge { (if is_index { "Image index" } else if page.subject.is_some() { "Artifact" } else { "Image" }) } }
                    @if is_index { li { span.badge.multi { "multi-arch" } } }
                    @for tag in &page.tags {
                        li { a.badge.tag href=(tag_url(owner, &page.repository, tag)) { (tag) } }
                    }
                }
            }
        }
        div.container.repo-layout {
            div {
                section.section aria-labelledby="details-title" {
                    h2 #details-title { "Details" }
                    dl.facts.wide {
                        dt { "Digest" } dd { (digest_with_copy(&page.digest)) }
                        dt { "Media type" } dd { code { (page.media_type) } }
                        @if let Some(at) = &page.created_at { dt { "Created" } dd { (time_element(at, context.now)) } }
                        @if let Some(size) = page.size { dt { "Size" } dd { (human_size(size)) } }
                        @if let Some(subject) = &page.subject {
                            dt { "Subject" } dd { a.mono href=(manifest_url(owner, &page.repository, subject)) { (subject) } }
                        }
                        @if let Some(hold) = &page.hold { dt { "Hold" } dd { (hold_cell(hold, page.hold_status.as_ref())) } }
                    }
                }
                @match &page.kind {
                    ManifestKind::Index { platforms } => {
                        section.section aria-labelledby="platforms-title" {
                            h2 #platforms-title { "Platforms" }
                            div.table-wrap { table.data {
                                thead { tr {
                                    th scope="col" { "Platform" }
                                    th scope="col" { "Manifest" }
                                    th scope="col" { "Media type" }
                                    th scope="col" class="num" { "Size" }
                                } }
                                tbody {
                                    @for entry in platforms {
                                        tr {
                                            th scope="row" { span.badge.platform { (entry.platform.as_deref().unwrap_or("unknown")) } }
                                            td { a.mono href=(manifest_url(owner, &page.repository, &entry.digest)) title=(entry.digest) { (short_digest(&entry.digest)) } }
                                            td { code.break { (entry.media_type.as_deref().unwrap_or("—")) } }
                                            td.num { (entry.size.map(human_size).unwrap_or_default()) }
                                        }
                                    }
                                }
                            } }
                        }
                    }
                    ManifestKind::Image { config, layers } => {
                        @if let Some(config) = config {
                            section.section aria-labelledby="config-title" {
                                h2 #config-title { "Config" }
                                dl.facts.wide {
                                    dt { "Digest" } dd { (digest_with_copy(&config.digest)) }
                                    @if let Some(media_type) = &config.media_type { dt { "Media type" } dd { code { (media_type) } } }
                                    @if let Some(size) = config.size { dt { "Size" } dd { (human_size(size)) } }
                                }
                            }
                        }
                        section.section aria-labelledby="layers-title" {
                            h2 #layers-title { "Layers" span.muted { " (" (layers.len()) ")" } }
                            @if layers.is_empty() {
                                p.empty { "No layers." }
                            } @else {
                                div.table-wrap { table.data {
                                    thead { tr {
                                        th scope="col" class="num" { "#" }
                                        th scope="col" { "Digest" }
                                        th scope="col" { "Media type" }
                                        th scope="col" class="num" { "Size" }
                                    } }
                                    tbody { (layer_rows(layers)) }
                                } }
                            }
                        }
                    }
                }
                @if let Some(layers) = layers { (layers) }
                (annotations_section(&page.annotations))
                section.section aria-labelledby="referrers-title" {
                    h2 #referrers-title { "Referrers" }
                    @if page.referrers.is_empty() {
                        p.muted { "No signatures, SBOMs or attestations refer to this manifest." }
                    } @else {
                        div.table-wrap { table.data {
                            thead { tr {
                                th scope="col" { "Artifact type" }
                                th scope="col" { "Manifest" }
                                th scope="col" class="num" { "Size" }
                                th scope="col" { "Annotations" }
                            } }
                            tbody {
                                @for referrer in &page.referrers {
                                    tr {
                                        th scope="row" { code.break { (referrer.artifact_type.as_deref().unwrap_or(&referrer.media_type)) } }
                                        td { a.mono href=(manifest_url(owner, &page.repository, &referrer.digest)) title=(referrer.digest) { (short_digest(&referrer.digest)) } }
                                        td.num { (referrer.size.map(human_size).unwrap_or_default()) }
                                        td {
                                            @for (key, value) in &referrer.annotations {
                                                div.break { code { (key) } ": " (annotation_value(value)) }
                                            }
                                        }
                                    }
                                }
                            }
                        } }
                    }
                }
            }
            aside aria-label="Pull and annotations" {
                section.panel aria-labelledby="pull-title" {
                    h2 #pull-title { "Pull" }
                    @if let Some(reference) = &by_tag {
                        (pull_box(&page.oci_client, reference))
                        p.pull-note { "By tag. Pinned by digest:" }
                    }
                    (pull_box(&page.oci_client, &by_digest))
                }
                p { a href=(repository_url(owner, &page.repository)) { "← All tags of " (page.repository) } }
            }
        }
    };
    let title = format!("{owner}/{}{reference_label}", page.repository);
    let description = format!(
        "{title}: {}{}",
        if is_index { "multi-platform image index" } else { "image" },
        page.size.map(|size| format!(", {}", human_size(size))).unwrap_or_default()
    );
    layout::render(Page { title: &title, description: &description, section: Section::Other, query: "", body })
}

/// The styled 404 page (served with status 404).
pub fn not_found(what: &str) -> Markup {
    let body = html! {
        div.container.error-page {
            p.code aria-hidden="true" { "404" }
            h1 { "Not found" }
            p { (what) }
            form role="search" action="/search" method="get" {
                div.search-field {
                    label.visually-hidden for="not-found-search" { "Search repositories" }
                    (search_icon())
                    input #not-found-search type="search" name="q" placeholder="Search images" autocomplete="off";
                }
            }
            p { a.button.secondary href="/" { "Back to the home page" } }
        }
    };
    layout::render(Page { title: "Not found", description: what, section: Section::Other, query: "", body })
}

/// The page for a failure on our side (served with status 500 or 503).
pub fn server_error(message: &str) -> Markup {
    let body = html! {
        div.container.error-page {
            p.code aria-hidden="true" { "!" }
            h1 { "Something went wrong" }
            p { (message) }
            p { a.button.secondary href="/" { "Back to the home page" } }
        }
    };
    layout::render(Page { title: "Error", description: message, section: Section::Other, query: "", body })
}

/// A hold's DID with what the log says about reaching it: the endpoint its DID document
/// names, or "unreachable" and why (for example a did:web on a private address, which atcr
/// refuses to contact).
fn hold_cell(hold: &str, status: Option<&HoldStatus>) -> Markup {
    html! {
        @if hold.starts_with("did:") { a.hold-link href=(super::holds::hold_url(hold)) { code { (hold) } } } @else { code { (hold) } }
        @match status {
            Some(HoldStatus::Reachable { endpoint }) => {
                " " span.muted { "at " code { (endpoint) } }
            }
            Some(HoldStatus::Unreachable { reason }) => {
                " " span.badge.warn.hold-unreachable title=(reason) { "unreachable" }
                p.muted.hold-reason { (reason) }
            }
            Some(HoldStatus::Unknown) | None => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod samples {
    //! Hand-built view models, shaped like the demo's data, for the renderer tests.

    use std::collections::BTreeMap;

    use atcr_query::browse::*;

    pub const ALICE: &str = "did:plc:alice0000000000000000000";

    pub fn card(repository: &str, platforms: &[&str]) -> RepoCard {
        RepoCard {
            did: ALICE.into(),
            handle: Some("alice.test".into()),
            repository: repository.into(),
            description: Some("A tiny web server".into()),
            tags: vec!["latest".into(), "1.27".into()],
            platforms: platforms.iter().map(|platform| platform.to_string()).collect(),
            stars: 3,
            size: 12_400_000,
            manifests: 3,
            last_push: Some("2025-03-01T10:00:00.000Z".into()),
        }
    }

    pub fn home() -> HomePage {
        HomePage {
            stats: NetworkStats { users: 3, repositories: 5, manifests: 16, tags: 14, stars: 6 },
            recent: vec![card("web/nginx-mini", &["linux/amd64", "linux/arm64/v8"]), card("hello", &["linux/amd64"])],
            most_starred: vec![card("hello", &["linux/amd64"])],
            new_repositories: vec![],
            most_pulled: vec![],
            trending: vec![],
        }
    }

    pub fn user() -> UserPage {
        UserPage {
            did: ALICE.into(),
            handle: Some("alice.test".into()),
            handle_valid: true,
            pds_endpoint: Some("http://localhost:2583".into()),
            active: true,
            oci_client: "podman".into(),
            default_hold: Some("did:web:hold.demo.test".into()),
            default_hold_status: Some(HoldStatus::Reachable { endpoint: "https://hold.demo.test".into() }),
            joined: Some("2025-02-01T09:00:00Z".into()),
            repository_count: 2,
            image_count: 6,
            stars_received: 5,
            repositories: vec![card("hello", &["linux/amd64"])],
        }
    }

    pub const HOSTILE: &str = "<script>window.__pwned=1;alert(1)</script><img src=x onerror=\"window.__pwned=2;alert(2)\">[click](javascript:alert(3))";

    pub fn repository(readme: &str, annotations: BTreeMap<String, String>) -> RepositoryPage {
        RepositoryPage {
            did: ALICE.into(),
            handle: Some("alice.test".into()),
            repository: "web/nginx-mini".into(),
            description: Some("nginx, small".into()),
            readme: Some(readme.into()),
            annotations,
            source_url: Some("https://github.com/example/nginx-mini".into()),
            documentation_url: Some("javascript:alert(4)".into()),
            oci_client: "podman".into(),
            pull_name: "alice.test/web/nginx-mini".into(),
            tags: vec![
                TagSummary {
                    name: "1.27".into(),
                    digest: format!("sha256:{}", "a".repeat(64)),
                    media_type: Some("application/vnd.oci.image.index.v1+json".into()),
                    platforms: vec!["linux/amd64".into(), "linux/arm64/v8".into()],
                    multi_arch: true,
                    size: Some(24_000_000),
                    updated_at: Some("2025-03-01T10:00:00Z".into()),
                    scan: None,
                },
                TagSummary {
                    name: "latest".into(),
                    digest: format!("sha256:{}", "a".repeat(64)),
                    media_type: Some("application/vnd.oci.image.index.v1+json".into()),
                    platforms: vec!["linux/amd64".into(), "linux/arm64/v8".into()],
                    multi_arch: true,
                    size: Some(24_000_000),
                    updated_at: Some("2025-03-01T10:00:00Z".into()),
                    scan: None,
                },
            ],
            stars: 2,
            size: 24_000_000,
            manifests: 3,
            last_push: Some("2025-03-01T10:00:00Z".into()),
        }
    }

    pub fn index_manifest() -> ManifestPage {
        ManifestPage {
            did: ALICE.into(),
            handle: Some("alice.test".into()),
            repository: "web/nginx-mini".into(),
            reference_tag: Some("latest".into()),
            digest: format!("sha256:{}", "a".repeat(64)),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            created_at: Some("2025-03-01T10:00:00Z".into()),
            size: Some(24_000_000),
            annotations: BTreeMap::from([("org.opencontainers.image.version".into(), "1.27.3".into())]),
            hold: Some("did:web:hold.demo.test".into()),
            hold_status: Some(HoldStatus::Unreachable {
                reason: "resolving did:web:hold.demo.test: refused by the outbound URL policy: 10.0.0.1 is a private address"
                    .into(),
            }),
            tags: vec!["1.27".into(), "latest".into()],
            subject: None,
            kind: ManifestKind::Index {
                platforms: vec![
                    PlatformEntry {
                        platform: Some("linux/amd64".into()),
                        digest: format!("sha256:{}", "b".repeat(64)),
                        media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
                        size: Some(12_000_000),
                    },
                    PlatformEntry {
                        platform: Some("linux/arm64/v8".into()),
                        digest: format!("sha256:{}", "c".repeat(64)),
                        media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
                        size: Some(12_000_000),
                    },
                ],
            },
            referrers: vec![ReferrerEntry {
                digest: format!("sha256:{}", "d".repeat(64)),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                artifact_type: Some("application/vnd.dev.sigstore.bundle.v0.3+json".into()),
                size: Some(900),
                annotations: BTreeMap::from([("created".into(), "<b>today</b>".into())]),
            }],
            pull_name: "alice.test/web/nginx-mini".into(),
            oci_client: "docker".into(),
        }
    }

    pub fn image_manifest() -> ManifestPage {
        ManifestPage {
            reference_tag: None,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            tags: vec![],
            kind: ManifestKind::Image {
                config: Some(LayerEntry {
                    digest: format!("sha256:{}", "e".repeat(64)),
                    media_type: Some("application/vnd.oci.image.config.v1+json".into()),
                    size: Some(1_200),
                }),
                layers: vec![
                    LayerEntry {
                        digest: format!("sha256:{}", "f".repeat(64)),
                        media_type: Some("application/vnd.oci.image.layer.v1.tar+gzip".into()),
                        size: Some(3_400_000),
                    },
                    LayerEntry { digest: format!("sha256:{}", "9".repeat(64)), media_type: None, size: None },
                ],
            },
            referrers: vec![],
            ..index_manifest()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn context() -> RenderContext {
        RenderContext {
            host: "registry.example:8080".into(),
            now: super::super::format::parse_time("2025-03-04T10:00:00Z").expect("time"),
            live: None,
        }
    }

    fn assert_contains_all(html: &str, expected: &[&str]) {
        for fragment in expected {
            assert!(html.contains(fragment), "missing {fragment:?} in:\n{html}");
        }
    }

    /// The accessibility basics every page must keep.
    fn assert_page_basics(html: &str) {
        assert_eq!(html.matches("<h1").count(), 1, "one h1 per page:\n{html}");
        assert!(!html.contains("style="), "CSP forbids style attributes:\n{html}");
        assert_contains_all(html, &["<main id=\"main\"", "<header", "<footer", "<nav"]);
    }

    #[test]
    fn home_lists_recent_starred_and_new_with_stats() {
        let html = home(&samples::home(), &context()).into_string();
        assert_page_basics(&html);
        assert_contains_all(
            &html,
            &[
                "Recently pushed",
                "Most starred",
                "New repositories",
                "Nothing here yet.",
                r#"href="/r/alice.test/web/nginx-mini""#,
                "multi-arch",
                "linux/arm64/v8",
                "12 MB",
                r#"<time datetime="2025-03-01T10:00:00.000Z" title="2025-03-01 10:00 UTC">3 days ago</time>"#,
                "<dd>16</dd>",
            ],
        );
        // single-platform repositories carry no multi-arch badge
        let single = super::super::components::repo_card(&samples::card("x", &["linux/amd64"]), &context(), true);
        assert!(!single.into_string().contains("multi-arch"));
    }

    #[test]
    fn user_page_shows_identity_stats_and_repositories() {
        let html = user(&samples::user(), &context()).into_string();
        assert_page_basics(&html);
        assert_contains_all(
            &html,
            &[
                "<h1>alice.test</h1>",
                samples::ALICE,
                "Stars received",
                "<dd>5</dd>",
                "<svg class=\"identicon\"",
                "/r/alice.test/hello",
            ],
        );
        let mut unverified = samples::user();
        unverified.handle_valid = false;
        unverified.active = false;
        let html = user(&unverified, &context()).into_string();
        assert_contains_all(&html, &["handle not verified", "account inactive"]);
    }

    #[test]
    fn repository_page_renders_readme_tags_and_pull_command() {
        let annotations = BTreeMap::from([
            ("org.opencontainers.image.source".into(), "https://github.com/example/nginx-mini".into()),
            ("org.opencontainers.image.licenses".into(), "MIT".into()),
        ]);
        let html = repository_with_history(
            &samples::repository("# nginx-mini\n\nSmall **nginx**.", annotations),
            &context(),
            None,
        )
        .into_string();
        assert_page_basics(&html);
        assert_contains_all(
            &html,
            &[
                "<h2>nginx-mini</h2>",
                "<strong>nginx</strong>",
                "podman pull registry.example:8080/alice.test/web/nginx-mini:latest",
                r#"href="/r/alice.test/web/nginx-mini/-/tag/latest""#,
                r#"href="/r/alice.test/web/nginx-mini/-/manifest/sha256:aaaa"#,
                "multi-arch",
                r#"<a href="https://github.com/example/nginx-mini" rel="nofollow noopener noreferrer">"#,
                "MIT",
                "<th scope=\"col\">Tag</th>",
            ],
        );
        assert!(!html.contains("javascript:"), "a javascript: documentation URL is not a link:\n{html}");
    }

    #[test]
    fn hostile_readme_and_annotations_render_inert() {
        let annotations = BTreeMap::from([
            ("org.opencontainers.image.description".into(), samples::HOSTILE.into()),
            ("org.opencontainers.image.url".into(), "javascript:alert(5)".into()),
            ("x\"><script>alert(6)</script>".into(), "<svg onload=alert(7)>".into()),
        ]);
        let mut page = samples::repository(samples::HOSTILE, annotations);
        page.description = Some("<img src=x onerror=alert(8)>".into());
        let html = repository_with_history(&page, &context(), None).into_string();
        let lower = html.to_ascii_lowercase();
        assert!(!lower.contains("<script>window"), "{html}");
        assert!(!lower.contains("<script>alert"), "{html}");
        assert!(!lower.contains("<img src=x"), "{html}");
        assert!(!lower.contains("<svg onload"), "{html}");
        assert!(!lower.contains("href=\"javascript:"), "{html}");
        // the payloads are still visible as text (escaped), so people can see what was there
        assert!(html.contains("&lt;script&gt;window.__pwned=1"), "{html}");
    }

    #[test]
    fn index_page_lists_platforms_and_referrers() {
        let html = manifest(&samples::index_manifest(), &context()).into_string();
        assert_page_basics(&html);
        assert_contains_all(
            &html,
            &[
                "Image index",
                "Platforms",
                "linux/arm64/v8",
                r#"href="/r/alice.test/web/nginx-mini/-/manifest/sha256:bbbb"#,
                "application/vnd.dev.sigstore.bundle.v0.3+json",
                "&lt;b&gt;today&lt;/b&gt;",
                "docker pull registry.example:8080/alice.test/web/nginx-mini:latest",
                &format!("docker pull registry.example:8080/alice.test/web/nginx-mini@sha256:{}", "a".repeat(64)),
                "1.27.3",
                "hold-unreachable",
                "10.0.0.1 is a private address",
            ],
        );
    }

    #[test]
    fn user_page_shows_the_default_hold_endpoint() {
        let html = user(&samples::user(), &context()).into_string();
        assert_contains_all(&html, &["did:web:hold.demo.test", "https://hold.demo.test"]);
        assert!(!html.contains("unreachable"), "{html}");
    }

    #[test]
    fn image_page_lists_config_and_layers() {
        let html = manifest(&samples::image_manifest(), &context()).into_string();
        assert_page_basics(&html);
        assert_contains_all(
            &html,
            &[
                "Config",
                "Layers",
                &format!("sha256:{}", "e".repeat(64)),
                "application/vnd.oci.image.layer.v1.tar+gzip",
                "3.4 MB",
                "No signatures, SBOMs or attestations",
            ],
        );
        assert!(html.contains("@sha256:aaaaaaaaaaaa"), "opened by digest: {html}");
    }

    #[test]
    fn not_found_page_is_a_page() {
        let html = not_found("atcr knows no user <bob>.").into_string();
        assert_page_basics(&html);
        assert_contains_all(&html, &["404", "atcr knows no user &lt;bob&gt;.", "action=\"/search\""]);
    }
}
