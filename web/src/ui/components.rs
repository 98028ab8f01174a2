//! Pieces several pages use: repository cards, badges, icons, copy buttons, pull boxes.

use atcr_query::browse::RepoCard;
use maud::{Markup, html};
use time::OffsetDateTime;

use super::format::{human_size, identicon, owner_name, pull_command, repository_url, thousands, time_element};

/// What every renderer needs besides its view model.
#[derive(Debug, Clone)]
pub struct RenderContext {
    /// The registry's address as the client named it (sanitized Host header), for pull commands.
    pub host: String,
    /// Relative times are computed against this.
    pub now: OffsetDateTime,
    /// When set, the page's content re-renders itself on live events (see [`LiveRegion`]).
    pub live: Option<LiveRegion>,
}

impl RenderContext {
    pub fn new(host: String) -> Self {
        RenderContext { host, now: OffsetDateTime::now_utc(), live: None }
    }

    pub fn with_live(mut self, live: Option<LiveRegion>) -> Self {
        self.live = live;
        self
    }
}

/// A page region that updates live: the htmx SSE extension listens to `events_url` (an
/// `/api/v1/events` URL starting at the views checkpoint the page was rendered from), and on an
/// event `app.js` re-fetches `page_url` and swaps in its `#live-region` (throttled to one
/// request a second). The stream sends an event only once the views reflect it, so the re-fetched
/// page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRegion {
    pub events_url: String,
    pub page_url: String,
}

pub fn star_icon() -> Markup {
    html! {
        svg viewBox="0 0 16 16" aria-hidden="true" focusable="false" fill="currentColor" {
            path d="M8 .25a.75.75 0 0 1 .67.42l1.89 3.83 4.23.61a.75.75 0 0 1 .41 1.28l-3.06 2.98.72 4.21a.75.75 0 0 1-1.09.79L8 12.4l-3.78 1.98a.75.75 0 0 1-1.09-.79l.72-4.21L.8 6.39a.75.75 0 0 1 .42-1.28l4.22-.61L7.33.67A.75.75 0 0 1 8 .25" {}
        }
    }
}

pub fn tag_icon() -> Markup {
    html! {
        svg viewBox="0 0 16 16" aria-hidden="true" focusable="false" fill="currentColor" {
            path d="M1 7.78V2.75C1 1.78 1.78 1 2.75 1h5.03c.46 0 .9.18 1.24.51l5.5 5.5a1.75 1.75 0 0 1 0 2.48l-5.03 5.03a1.75 1.75 0 0 1-2.48 0l-5.5-5.5A1.75 1.75 0 0 1 1 7.78m1.5 0c0 .07.03.13.07.18l5.5 5.5a.25.25 0 0 0 .36 0l5.03-5.03a.25.25 0 0 0 0-.36l-5.5-5.5a.25.25 0 0 0-.18-.07H2.75a.25.25 0 0 0-.25.25ZM6 5a1 1 0 1 1 0 2 1 1 0 0 1 0-2" {}
        }
    }
}

pub fn size_icon() -> Markup {
    html! {
        svg viewBox="0 0 16 16" aria-hidden="true" focusable="false" fill="currentColor" {
            path d="m8.88.22 5.5 3.15c.39.22.62.63.62 1.08v6.1c0 .45-.23.86-.62 1.08l-5.5 3.15a1.75 1.75 0 0 1-1.76 0l-5.5-3.15A1.25 1.25 0 0 1 1 10.55v-6.1c0-.45.23-.86.62-1.08L7.12.22a1.75 1.75 0 0 1 1.76 0M8.13 1.52a.25.25 0 0 0-.26 0L2.81 4.42 8 7.39l5.19-2.97ZM2.5 10.4l4.75 2.72V8.69L2.5 5.98Zm6.25 2.72 4.75-2.72V5.98L8.75 8.69Z" {}
        }
    }
}

pub fn clock_icon() -> Markup {
    html! {
        svg viewBox="0 0 16 16" aria-hidden="true" focusable="false" fill="currentColor" {
            path d="M8 0a8 8 0 1 1 0 16A8 8 0 0 1 8 0M1.5 8a6.5 6.5 0 1 0 13 0 6.5 6.5 0 0 0-13 0m7-3.25v2.99l2.03 1.22a.75.75 0 0 1-.77 1.28l-2.4-1.44A.75.75 0 0 1 7 8.25v-3.5a.75.75 0 0 1 1.5 0" {}
        }
    }
}

pub fn layers_icon() -> Markup {
    html! {
        svg viewBox="0 0 16 16" aria-hidden="true" focusable="false" fill="currentColor" {
            path d="M7.62.07a.75.75 0 0 1 .76 0l6.25 3.5a.75.75 0 0 1 0 1.3l-6.25 3.5a.75.75 0 0 1-.76 0L1.37 4.87a.75.75 0 0 1 0-1.3ZM3.28 4.22 8 6.86l4.72-2.64L8 1.58ZM1.1 7.63a.75.75 0 0 1 1.03-.26L8 10.66l5.87-3.29a.75.75 0 1 1 .73 1.3l-6.22 3.49a.75.75 0 0 1-.76 0L1.37 8.67a.75.75 0 0 1-.27-1.04m0 3.5a.75.75 0 0 1 1.03-.26L8 14.16l5.87-3.29a.75.75 0 1 1 .73 1.3l-6.22 3.5a.75.75 0 0 1-.76 0l-6.25-3.5a.75.75 0 0 1-.27-1.04" {}
        }
    }
}

pub fn link_icon() -> Markup {
    html! {
        svg viewBox="0 0 16 16" aria-hidden="true" focusable="false" fill="currentColor" {
            path d="M7.78 3.22a.75.75 0 0 1 0 1.06L5.06 7a2.5 2.5 0 0 0 3.54 3.54l.72-.72a.75.75 0 1 1 1.06 1.06l-.72.72A4 4 0 0 1 4 5.94l2.72-2.72a.75.75 0 0 1 1.06 0m.44 9.56a.75.75 0 0 1 0-1.06L10.94 9A2.5 2.5 0 0 0 7.4 5.46l-.72.72a.75.75 0 0 1-1.06-1.06l.72-.72A4 4 0 0 1 12 10.06l-2.72 2.72a.75.75 0 0 1-1.06 0" {}
        }
    }
}

pub fn copy_icon() -> Markup {
    html! {
        svg viewBox="0 0 16 16" aria-hidden="true" focusable="false" fill="currentColor" {
            path d="M0 6.75C0 5.78.78 5 1.75 5h1.5a.75.75 0 0 1 0 1.5h-1.5a.25.25 0 0 0-.25.25v7.5c0 .14.11.25.25.25h7.5a.25.25 0 0 0 .25-.25v-1.5a.75.75 0 0 1 1.5 0v1.5A1.75 1.75 0 0 1 9.25 16h-7.5A1.75 1.75 0 0 1 0 14.25ZM5 1.75C5 .78 5.78 0 6.75 0h7.5C15.22 0 16 .78 16 1.75v7.5A1.75 1.75 0 0 1 14.25 11h-7.5A1.75 1.75 0 0 1 5 9.25Zm1.75-.25a.25.25 0 0 0-.25.25v7.5c0 .14.11.25.25.25h7.5a.25.25 0 0 0 .25-.25v-7.5a.25.25 0 0 0-.25-.25Z" {}
        }
    }
}

/// A copy-to-clipboard button, hidden until the script knows the clipboard API is there.
/// `what` completes the accessible name ("Copy pull command").
pub fn copy_button(text: &str, what: &str, small: bool) -> Markup {
    html! {
        button.copy.small[small] type="button" data-copy=(text) aria-label=(format!("Copy {what}")) hidden {
            (copy_icon())
            @if !small { span.copy-label { "Copy" } }
        }
    }
}

/// A full digest in monospace with a copy button.
pub fn digest_with_copy(digest: &str) -> Markup {
    html! {
        span.digest { code { (digest) } (copy_button(digest, "digest", true)) }
    }
}

/// The pull command for `reference` in the owner's preferred client, copyable.
pub fn pull_box(oci_client: &str, reference: &str) -> Markup {
    let command = pull_command(oci_client, reference);
    html! {
        div.pull {
            code { (command) }
            (copy_button(&command, "pull command", false))
        }
    }
}

/// Platforms worth showing (attestation manifests are `unknown/unknown`).
pub fn visible_platforms(platforms: &[String]) -> impl Iterator<Item = &String> {
    platforms.iter().filter(|platform| platform.as_str() != "unknown/unknown")
}

/// Platform badges, plus a "multi-arch" badge (text, not colour, carries the meaning).
pub fn platform_badges(platforms: &[String], multi_arch: bool) -> Markup {
    html! {
        ul.badges aria-label="Platforms" {
            @if multi_arch {
                li { span.badge.multi title="An image index: one tag, several platforms" { (layers_icon()) "multi-arch" } }
            }
            @for platform in visible_platforms(platforms) {
                li { span.badge.platform { (platform) } }
            }
        }
    }
}

/// One repository as a card (home, user and search pages). The title link covers the card.
pub fn repo_card(card: &RepoCard, context: &RenderContext, show_owner: bool) -> Markup {
    let owner = owner_name(&card.did, card.handle.as_deref());
    let multi_arch = visible_platforms(&card.platforms).count() > 1;
    html! {
        article.card {
            div.card-title {
                (identicon(&card.did, 28))
                h3 {
                    a href=(repository_url(owner, &card.repository)) {
                        @if show_owner { span.owner { (owner) " / " } }
                        (card.repository)
                    }
                }
            }
            @match &card.description {
                Some(description) if !description.trim().is_empty() => p.description { (description) },
                _ => p.description.muted { "No description" },
            }
            @if !card.platforms.is_empty() { (platform_badges(&card.platforms, multi_arch)) }
            (repo_meta(card.stars, card.tags.len() as u64, card.size, card.last_push.as_deref(), context))
        }
    }
}

/// Stars · tags · size · pushed: the one-line facts of a repository.
pub fn repo_meta(stars: u64, tags: u64, size: u64, last_push: Option<&str>, context: &RenderContext) -> Markup {
    html! {
        ul.meta {
            li.star title="Stars" { (star_icon()) (thousands(stars)) span.visually-hidden { " stars" } }
            li title="Tags" { (tag_icon()) (thousands(tags)) " " (if tags == 1 { "tag" } else { "tags" }) }
            @if size > 0 { li title="Size" { (size_icon()) (human_size(size)) } }
            @if let Some(at) = last_push { li { (clock_icon()) "pushed " (time_element(at, context.now)) } }
        }
    }
}
