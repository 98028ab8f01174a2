//! Holds and pull analytics: the hold directory `/holds`, hold pages `/holds/{did}`, the
//! analytics section of a repository page (pulls and pushes, with charts), and their JSON:
//! `/api/v1/holds`, `/api/v1/holds/{did}`, `/api/v1/repository-stats/{owner}/{repository…}`.
//!
//! Counts come from two places, always labelled apart: the counters holds publish
//! (`io.atcr.hold.stats`) and the pulls this atcr served itself (its local pull log).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, PreEscaped, html};

use atcr_query::browse::{BrowseError, HoldStatus};
use atcr_query::holds::{HoldCard, HoldPage, RepositoryStats};

use super::charts::{ATCR_PULLS, PULLS, PUSHES, Series, line_chart};
use super::components::RenderContext;
use super::format::{human_size, path_segment, repository_url, thousands, time_element, user_url};
use super::layout::{Page, Section, render};
use super::{html_response, not_found_page, read, request_host, security_headers, unavailable};
use crate::api::{ApiPath, ErrorBody, browse_of, query_blocking};
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    let pages = Router::new()
        .route("/holds", get(directory_page))
        .route("/holds/{did}", get(hold_page))
        .layer(axum::middleware::from_fn(security_headers));
    Router::new()
        .merge(pages)
        .route("/api/v1/holds", get(api_holds))
        .route("/api/v1/holds/{did}", get(api_hold))
        .route("/api/v1/repository-stats/{owner}/{*repository}", get(api_repository_stats))
}

/// The page of a hold.
pub fn hold_url(did: &str) -> String {
    format!("/holds/{}", path_segment(did))
}

fn owner_cell(did: &str, handle: Option<&str>) -> Markup {
    let name = handle.unwrap_or(did);
    html! { a href=(user_url(name)) { (name) } }
}

fn status_cell(status: &HoldStatus) -> Markup {
    html! {
        @match status {
            HoldStatus::Reachable { endpoint } => { span.hold-reachable { "reachable at " code { (endpoint) } } },
            HoldStatus::Unreachable { reason } => {
                span.badge.warn.hold-unreachable title=(reason) { "unreachable" }
                p.muted.hold-reason { (reason) }
            },
            HoldStatus::Unknown => { span.muted { "not resolved" } },
        }
    }
}

fn visibility(public: Option<bool>) -> &'static str {
    match public {
        Some(true) => "public",
        Some(false) => "private",
        None => "unknown",
    }
}

/// The hold directory.
pub fn directory(holds: &[HoldCard]) -> Markup {
    let body = html! {
        div.container.page {
            h1 { "Holds" }
            p.lead { "Holds store the layers of images. Each one publishes who runs it, its crew and its counters in its own repository." }
            @if holds.is_empty() {
                p.empty { "No holds known yet." }
            } @else {
                div.table-wrap {
                    table.data #holds {
                        caption.visually-hidden { "Holds" }
                        thead { tr {
                            th scope="col" { "Hold" }
                            th scope="col" { "Owner" }
                            th scope="col" { "Access" }
                            th.hide-sm scope="col" { "Region" }
                            th scope="col" class="num" { "Crew" }
                            th scope="col" class="num" { "Repositories" }
                            th.hide-sm scope="col" { "Reachability" }
                        } }
                        tbody {
                            @for hold in holds {
                                tr {
                                    th scope="row" { a.mono href=(hold_url(&hold.did)) { (hold.did) } }
                                    td { @if let Some(owner) = &hold.owner { (owner_cell(owner, hold.owner_handle.as_deref())) } }
                                    td { (visibility(hold.public)) }
                                    td.hide-sm { (hold.region.as_deref().unwrap_or("")) }
                                    td.num { (thousands(hold.crew_count)) }
                                    td.num { (thousands(hold.repository_count)) }
                                    td.hide-sm { (status_cell(&hold.status)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    render(Page {
        title: "Holds",
        description: "The holds that store the layers of images on atcr.",
        section: Section::Other,
        query: "",
        body,
    })
}

/// A chart in a figure, with a text alternative that says the same in numbers.
fn chart_figure(id: &str, caption: &str, summary: &str, series: &[Series<'_>]) -> Markup {
    html! {
        figure.chart #(id) {
            @match line_chart(series) {
                Some(svg) => div.chart-svg role="img" aria-label=(summary) { (PreEscaped(svg)) },
                None => p.empty { "Nothing to chart yet." },
            }
            figcaption.muted { (caption) }
        }
    }
}

/// One hold.
pub fn hold(page: &HoldPage, context: &RenderContext) -> Markup {
    let counters = [
        Series { name: "pulls", color: PULLS, points: page.series.iter().map(|p| (p.day.clone(), p.pulls)).collect() },
        Series {
            name: "pushes",
            color: PUSHES,
            points: page.series.iter().map(|p| (p.day.clone(), p.pushes)).collect(),
        },
    ];
    let summary = format!("{} pulls and {} pushes counted by the hold", page.pulls, page.pushes);
    let body = html! {
        div.container.page {
            h1 { "Hold " code #hold-did { (page.did) } }
            @if let Some(handle) = &page.handle { p.muted { (handle) } }
            div.repo-layout {
                div {
                    section.section aria-labelledby="repos-title" {
                        div.section-head { h2 #repos-title { "Repositories using this hold" } }
                        @if page.repositories.is_empty() {
                            p.empty { "No manifest names this hold." }
                        } @else {
                            div.table-wrap {
                                table.data #hold-repositories {
                                    caption.visually-hidden { "Repositories whose manifests name this hold" }
                                    thead { tr {
                                        th scope="col" { "Repository" }
                                        th scope="col" class="num" { "Images" }
                                        th scope="col" class="num" { "Pulls" }
                                        th scope="col" class="num" { "Pushes" }
                                    } }
                                    tbody {
                                        @for repository in &page.repositories {
                                            @let owner = repository.handle.as_deref().unwrap_or(&repository.did);
                                            tr {
                                                th scope="row" { a href=(repository_url(owner, &repository.repository)) { (owner) "/" (repository.repository) } }
                                                td.num { (thousands(repository.manifests)) }
                                                td.num { (repository.pulls.map(thousands).unwrap_or_default()) }
                                                td.num { (repository.pushes.map(thousands).unwrap_or_default()) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    section.section aria-labelledby="activity-title" {
                        div.section-head { h2 #activity-title { "Pulls and pushes" } }
                        (chart_figure("hold-chart", "Counters the hold publishes (io.atcr.hold.stats), cumulative, summed over repositories.", &summary, &counters))
                    }
                    section.section aria-labelledby="crew-title" {
                        div.section-head { h2 #crew-title { "Crew" } span.count { (page.crew_count) } }
                        @if page.crew.is_empty() {
                            p.empty { "No crew records." }
                        } @else {
                            ul.crew #hold-crew {
                                @for member in &page.crew {
                                    li {
                                        (owner_cell(&member.did, member.handle.as_deref()))
                                        @if let Some(role) = &member.role { " " span.badge { (role) } }
                                        @if let Some(tier) = &member.tier { " " span.badge.tag { (tier) } }
                                        @if !member.permissions.is_empty() { " " span.muted { (member.permissions.join(", ")) } }
                                    }
                                }
                            }
                        }
                    }
                }
                aside aria-label="Hold details" {
                    section.panel aria-labelledby="about-title" {
                        h2 #about-title { "About" }
                        dl.facts #hold-facts {
                            dt { "Owner" } dd #hold-owner { @match &page.owner { Some(owner) => (owner_cell(owner, page.owner_handle.as_deref())), None => span.muted { "no captain record" } } }
                            dt { "Access" } dd #hold-access { (visibility(page.public)) }
                            @if let Some(region) = &page.region { dt { "Region" } dd #hold-region { (region) } }
                            dt { "Crew" } dd #hold-crew-count { (thousands(page.crew_count)) }
                            @if let Some(all) = page.allow_all_crew { dt { "Open crew" } dd { (if all { "yes" } else { "no" }) } }
                            @if let Some(at) = &page.deployed_at { dt { "Deployed" } dd { (time_element(at, context.now)) } }
                            dt { "Repositories" } dd #hold-repository-count { (thousands(page.repositories.len() as u64)) }
                            dt { "Layers" } dd #hold-layers { (thousands(page.layer_count)) " (" (human_size(page.layer_bytes)) ")" }
                            dt { "Pulls" } dd #hold-pulls { (thousands(page.pulls)) }
                            dt { "Pushes" } dd #hold-pushes { (thousands(page.pushes)) }
                            @if let Some(successor) = &page.successor {
                                dt { "Moved to" } dd { a.mono href=(hold_url(successor)) { (successor) } }
                            }
                            dt { "Reachability" } dd { (status_cell(&page.status)) }
                        }
                    }
                }
            }
        }
    };
    let title = format!("Hold {}", page.did);
    render(Page { title: &title, description: &summary, section: Section::Other, query: "", body })
}

/// The analytics section of a repository page.
pub fn repository_section(stats: &RepositoryStats) -> Markup {
    let atcr = [Series {
        name: "pulls via atcr",
        color: ATCR_PULLS,
        points: stats.atcr_daily.iter().map(|day| (day.day.clone(), day.pulls)).collect(),
    }];
    let holds = [
        Series {
            name: "pulls (holds)",
            color: PULLS,
            points: stats.hold_series.iter().map(|p| (p.day.clone(), p.pulls)).collect(),
        },
        Series {
            name: "pushes (holds)",
            color: PUSHES,
            points: stats.hold_series.iter().map(|p| (p.day.clone(), p.pushes)).collect(),
        },
    ];
    html! {
        section.section #analytics aria-labelledby="analytics-title" {
            div.section-head { h2 #analytics-title { "Pulls and pushes" } }
            dl.stats aria-label="Pull statistics" {
                div { dt { "Pulls via atcr" } dd #atcr-pulls { (thousands(stats.atcr_pulls)) } }
                div { dt { "Pulls (holds)" } dd #hold-pulls { (thousands(stats.hold_pulls)) } }
                div { dt { "Pushes (holds)" } dd #hold-pushes { (thousands(stats.hold_pushes)) } }
            }
            (chart_figure("atcr-pull-chart", "Manifest pulls served by this atcr per day, the last 30 days.", &format!("{} pulls via atcr", stats.atcr_pulls), &atcr))
            @if !stats.hold_series.is_empty() {
                (chart_figure("hold-stats-chart", "Counters holds publish for this repository (io.atcr.hold.stats), cumulative.", &format!("{} pulls and {} pushes counted by holds", stats.hold_pulls, stats.hold_pushes), &holds))
            }
            @if !stats.stored_on.is_empty() {
                p #stored-on { "Layers stored on " @for (index, hold) in stats.stored_on.iter().enumerate() {
                    @if index > 0 { ", " }
                    a.mono href=(hold_url(hold)) { (hold) }
                } "." }
            }
            @if !stats.holds.is_empty() {
                p.muted { "Counted by " @for (index, hold) in stats.holds.iter().enumerate() {
                    @if index > 0 { ", " }
                    a.mono href=(hold_url(&hold.hold)) { (hold.hold) }
                } "." }
            }
        }
    }
}

/// The analytics section of a repository page; `None` when browsing is off or the read failed
/// (the rest of the page still renders).
pub(crate) async fn repository_section_for(state: &AppState, owner: &str, repository: &str) -> Option<Markup> {
    let browse = state.browse.clone()?;
    let (owner, repository) = (owner.to_string(), repository.to_string());
    let stats = read("repository stats", move || browse.repository_stats(&owner, &repository)).await.ok()??;
    Some(repository_section(&stats))
}

async fn directory_page(State(state): State<AppState>) -> Response {
    let Some(browse) = state.browse.clone() else { return unavailable("Browsing") };
    match read("holds", move || browse.holds()).await {
        Ok(holds) => html_response(StatusCode::OK, directory(&holds)),
        Err(response) => response,
    }
}

async fn hold_page(State(state): State<AppState>, Path(did): Path<String>, headers: HeaderMap) -> Response {
    let Some(browse) = state.browse.clone() else { return unavailable("Browsing") };
    let lookup = did.clone();
    match read("hold", move || browse.hold(&lookup)).await {
        Ok(Some(page)) => html_response(StatusCode::OK, hold(&page, &RenderContext::new(request_host(&headers)))),
        Ok(None) => not_found_page(&format!("atcr knows no hold {did}.")),
        Err(response) => response,
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BrowseError> + Send + 'static,
) -> Result<T, ApiError> {
    query_blocking("holds", work).await
}

/// `GET /api/v1/holds`: every hold atcr knows.
#[utoipa::path(get, path = "/api/v1/holds", tag = "registry", summary = "Every hold atcr knows",
    responses(
        (status = 200, description = "Holds with a captain record or named by a manifest, by DID", body = Vec<HoldCard>),
        (status = 503, description = "Browsing is not configured", body = ErrorBody),
    ))]
pub(crate) async fn api_holds(State(state): State<AppState>) -> Result<Response, ApiError> {
    let browse = browse_of(&state)?;
    Ok(axum::Json(blocking(move || browse.holds()).await?).into_response())
}

/// `GET /api/v1/holds/{did}`: one hold.
#[utoipa::path(get, path = "/api/v1/holds/{did}", tag = "registry", summary = "A hold: owner, access, crew, repositories, counters",
    params(("did" = String, Path, example = "did:web:hold.example.com", description = "The hold's DID")),
    responses(
        (status = 200, description = "The hold", body = HoldPage),
        (status = 404, description = "No such hold", body = ErrorBody),
        (status = 503, description = "Browsing is not configured", body = ErrorBody),
    ))]
pub(crate) async fn api_hold(
    State(state): State<AppState>,
    ApiPath(did): ApiPath<String>,
) -> Result<Response, ApiError> {
    let browse = browse_of(&state)?;
    let lookup = did.clone();
    match blocking(move || browse.hold(&lookup)).await? {
        Some(page) => Ok(axum::Json(page).into_response()),
        None => Err(ApiError::not_found(format!("no hold {did}"))),
    }
}

/// `GET /api/v1/repository-stats/{owner}/{repository…}`: pull and push counts over time.
#[utoipa::path(get, path = "/api/v1/repository-stats/{owner}/{repository}", tag = "registry", summary = "Pull and push counts of a repository",
    params(
        ("owner" = String, Path, example = "alice.test", description = "A handle or a DID"),
        ("repository" = String, Path, example = "hello", description = "The repository name; may contain `/` (sent unescaped)"),
    ),
    responses(
        (status = 200, description = "atcr's own pulls (total, per day) and the holds' counters (per hold, over time)", body = RepositoryStats),
        (status = 404, description = "No such repository", body = ErrorBody),
        (status = 503, description = "Browsing is not configured", body = ErrorBody),
    ))]
pub(crate) async fn api_repository_stats(
    State(state): State<AppState>,
    ApiPath((owner, repository)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let browse = browse_of(&state)?;
    let repository = repository.trim_end_matches('/').to_string();
    let (lookup_owner, lookup_repository) = (owner.clone(), repository.clone());
    match blocking(move || browse.repository_stats(&lookup_owner, &lookup_repository)).await? {
        Some(stats) => Ok(axum::Json(stats).into_response()),
        None => Err(ApiError::not_found(format!("no repository {owner}/{repository}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atcr_query::holds::{CounterPoint, CrewMember, DayCount, HoldRepository};

    fn page() -> HoldPage {
        HoldPage {
            did: "did:web:hold.test".into(),
            handle: None,
            owner: Some("did:plc:captain".into()),
            owner_handle: Some("captain.test".into()),
            public: Some(true),
            region: Some("<b>eu</b>".into()),
            successor: Some("did:web:next.test".into()),
            deployed_at: Some("2026-01-01T00:00:00Z".into()),
            allow_all_crew: Some(false),
            crew_count: 1,
            crew: vec![CrewMember {
                did: "did:plc:m".into(),
                handle: None,
                role: Some("write".into()),
                permissions: vec!["blob:write".into()],
                tier: None,
                added_at: None,
            }],
            repositories: vec![HoldRepository {
                did: "did:plc:alice".into(),
                handle: Some("alice.test".into()),
                repository: "web/app".into(),
                manifests: 2,
                pulls: Some(25),
                pushes: Some(2),
            }],
            layer_count: 2,
            layer_bytes: 1500,
            pulls: 25,
            pushes: 2,
            series: vec![CounterPoint { day: "2026-02-01".into(), pulls: 10, pushes: 1 }],
            status: HoldStatus::Unreachable { reason: "refused by the outbound URL policy".into() },
        }
    }

    #[test]
    fn a_hold_page_shows_its_facts_escaped() {
        let html = hold(&page(), &RenderContext::new("atcr.test".into())).into_string();
        for expected in [
            "captain.test",
            "public",
            "&lt;b&gt;eu&lt;/b&gt;",
            "/holds/did:web:next.test",
            "/r/alice.test/web/app",
            "hold-unreachable",
            "1.5 kB",
            "<svg",
        ] {
            assert!(html.contains(expected), "missing {expected}");
        }
        assert!(!html.contains("<b>eu</b>"));
    }

    #[test]
    fn the_repository_section_charts_atcr_pulls() {
        let stats = RepositoryStats {
            did: "did:plc:alice".into(),
            repository: "web/app".into(),
            atcr_pulls: 7,
            atcr_daily: vec![
                DayCount { day: "2026-02-01".into(), pulls: 0 },
                DayCount { day: "2026-02-02".into(), pulls: 7 },
            ],
            hold_pulls: 0,
            hold_pushes: 0,
            holds: vec![],
            hold_series: vec![],
            stored_on: vec!["did:web:hold.test".into()],
        };
        let html = repository_section(&stats).into_string();
        assert!(html.contains("atcr-pull-chart") && html.contains("<svg"));
        assert!(!html.contains("hold-stats-chart"), "no hold counters, no second chart");
        assert!(html.contains(r#"href="/holds/did:web:hold.test""#), "the repository links the hold it is stored on");
    }
}
