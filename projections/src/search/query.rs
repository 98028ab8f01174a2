//! Turns a [`SearchRequest`] into a tantivy query.
//!
//! Every word of free text must match somewhere (one required group per word token); within a
//! group the fields are alternatives with different weights: the repository name counts most
//! (with typo tolerance and, for the word being typed, prefix matching), then the handle, tags
//! and description, then annotations and the README. On top of that, optional clauses reward an
//! exact repository name (the whole name or its last segment) so it ranks first. Filters are
//! required clauses that do not score.

use std::ops::Bound;

use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, EmptyQuery, FuzzyTermQuery, Occur, PhraseQuery, Query,
    RangeQuery, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{DateTime, Term};

use super::schema::{Fields, normalize_arch};
use super::{FilterClause, SearchFilter, SearchRequest};

/// Weights of the places a word can match.
const REPOSITORY_WORD: f32 = 3.0;
const REPOSITORY_TYPO: f32 = 1.0;
const REPOSITORY_PREFIX: f32 = 1.5;
const HANDLE_WORD: f32 = 2.0;
const HANDLE_PREFIX: f32 = 1.5;
const TAG_WORD: f32 = 1.0;
const DESCRIPTION_WORD: f32 = 1.0;
const ANNOTATION_WORD: f32 = 0.5;
const README_WORD: f32 = 0.5;
/// Exact names: large enough that an exact name beats any amount of word matching elsewhere.
const EXACT_FULL_NAME: f32 = 40.0;
const EXACT_REPOSITORY: f32 = 30.0;
const EXACT_LEAF: f32 = 20.0;

/// Shortest word that is matched as a prefix while typing (one letter would match everything).
const PREFIX_MIN_CHARS: usize = 2;
/// Most word groups one query builds; the rest of a very long query is ignored.
const MAX_WORD_TOKENS: usize = 16;

pub(crate) struct QueryBuilder<'a> {
    pub fields: &'a Fields,
    pub analyzer: TextAnalyzer,
}

/// Fuzzy distance for a word of `chars` characters: none for short words, where one edit
/// changes the meaning, 1 from 4 characters, 2 from 8.
pub(crate) fn typo_distance(chars: usize) -> u8 {
    match chars {
        0..=3 => 0,
        4..=7 => 1,
        _ => 2,
    }
}

fn text_term(field: Field, text: &str) -> Term {
    Term::from_field_text(field, text)
}

fn term(field: Field, text: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(text_term(field, text), IndexRecordOption::Basic))
}

fn scored_term(field: Field, text: &str, boost: f32) -> Box<dyn Query> {
    Box::new(BoostQuery::new(Box::new(TermQuery::new(text_term(field, text), IndexRecordOption::WithFreqs)), boost))
}

fn constant(query: Box<dyn Query>, score: f32) -> Box<dyn Query> {
    Box::new(ConstScoreQuery::new(query, score))
}

fn prefix(field: Field, text: &str) -> Box<dyn Query> {
    Box::new(FuzzyTermQuery::new_prefix(text_term(field, text), 0, true))
}

fn any_of(queries: Vec<Box<dyn Query>>) -> Box<dyn Query> {
    match queries.len() {
        0 => Box::new(EmptyQuery),
        _ => Box::new(BooleanQuery::union(queries)),
    }
}

impl QueryBuilder<'_> {
    /// Word tokens as the index sees them (lowercase, split on non-alphanumerics).
    pub fn tokens(&mut self, text: &str) -> Vec<String> {
        let mut tokens = Vec::new();
        let mut stream = self.analyzer.token_stream(text);
        stream.process(&mut |token| tokens.push(token.text.clone()));
        tokens
    }

    pub fn build(&mut self, request: &SearchRequest) -> Box<dyn Query> {
        let fields = *self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();

        let mut word_tokens: Vec<String> = Vec::new();
        for word in &request.words {
            word_tokens.extend(self.tokens(word));
        }
        word_tokens.truncate(MAX_WORD_TOKENS);
        let last = word_tokens.len().checked_sub(1);
        for (position, token) in word_tokens.iter().enumerate() {
            let typing = request.prefix_last_word && Some(position) == last;
            clauses.push((Occur::Must, self.word_group(token, typing)));
        }
        for word in &request.words {
            let exact = word.trim().to_lowercase();
            if exact.is_empty() {
                continue;
            }
            clauses.push((Occur::Should, constant(term(fields.full_name, &exact), EXACT_FULL_NAME)));
            clauses.push((Occur::Should, constant(term(fields.repository_raw, &exact), EXACT_REPOSITORY)));
            clauses.push((Occur::Should, constant(term(fields.repository_leaf, &exact), EXACT_LEAF)));
        }

        for phrase in &request.phrases {
            let tokens = self.tokens(phrase);
            if tokens.is_empty() {
                continue;
            }
            clauses.push((Occur::Must, self.phrase_group(&tokens)));
        }

        for word in &request.excluded_words {
            let tokens = self.tokens(word);
            if tokens.is_empty() {
                continue;
            }
            clauses.push((Occur::MustNot, self.phrase_group(&tokens)));
        }

        for clause in &request.filters {
            let FilterClause { filter, negated } = clause;
            let query = self.filter(filter);
            match negated {
                true => clauses.push((Occur::MustNot, query)),
                false => clauses.push((Occur::Must, constant(query, 0.0))),
            }
        }

        if !clauses.iter().any(|(occur, _)| *occur == Occur::Must) {
            clauses.push((Occur::Must, constant(Box::new(AllQuery), 0.0)));
        }
        Box::new(BooleanQuery::new(clauses))
    }

    /// Where one word may match, each place with its weight.
    fn word_group(&self, token: &str, typing: bool) -> Box<dyn Query> {
        let fields = self.fields;
        let chars = token.chars().count();
        let mut alternatives = vec![
            scored_term(fields.repository, token, REPOSITORY_WORD),
            scored_term(fields.handle, token, HANDLE_WORD),
            scored_term(fields.tags, token, TAG_WORD),
            scored_term(fields.description, token, DESCRIPTION_WORD),
            scored_term(fields.annotations, token, ANNOTATION_WORD),
            scored_term(fields.readme, token, README_WORD),
        ];
        let distance = typo_distance(chars);
        if distance > 0 {
            let fuzzy = FuzzyTermQuery::new(text_term(fields.repository, token), distance, true);
            alternatives.push(constant(Box::new(fuzzy), REPOSITORY_TYPO));
        }
        if chars >= PREFIX_MIN_CHARS {
            alternatives.push(constant(prefix(fields.handle_raw, token), HANDLE_PREFIX));
            if typing {
                alternatives.push(constant(prefix(fields.repository, token), REPOSITORY_PREFIX));
            }
        }
        any_of(alternatives)
    }

    /// The words in this order, in the name, description, README or annotations.
    fn phrase_group(&self, tokens: &[String]) -> Box<dyn Query> {
        let fields = self.fields;
        let places = [
            (fields.repository, REPOSITORY_WORD),
            (fields.description, DESCRIPTION_WORD),
            (fields.readme, README_WORD),
            (fields.annotations, ANNOTATION_WORD),
        ];
        let alternatives = places
            .into_iter()
            .map(|(field, boost)| -> Box<dyn Query> {
                if let [single] = tokens {
                    return scored_term(field, single, boost);
                }
                let terms = tokens.iter().map(|token| text_term(field, token)).collect();
                Box::new(BoostQuery::new(Box::new(PhraseQuery::new(terms)), boost))
            })
            .collect();
        any_of(alternatives)
    }

    fn filter(&self, filter: &SearchFilter) -> Box<dyn Query> {
        let fields = self.fields;
        match filter {
            SearchFilter::User { value } => user_filter(fields, value),
            SearchFilter::Repository { value } => {
                let value = value.trim().to_lowercase();
                match value.strip_suffix('*') {
                    Some(start) => prefix(fields.repository_raw, start),
                    None => any_of(vec![term(fields.repository_raw, &value), term(fields.repository_leaf, &value)]),
                }
            }
            SearchFilter::Hold { value } => {
                let value = value.trim().to_lowercase();
                let mut names = vec![term(fields.hold, &value)];
                if !value.starts_with("did:") && !value.contains("://") {
                    names.push(term(fields.hold, &format!("did:web:{value}")));
                }
                any_of(names)
            }
            SearchFilter::Os { value } => term(fields.os, &value.trim().to_lowercase()),
            SearchFilter::Arch { value } => term(fields.arch, &normalize_arch(value)),
            SearchFilter::Platform { value } => {
                let value = value.trim().to_lowercase();
                let platform = match value.split_once('/') {
                    Some((os, arch)) => format!("{os}/{}", normalize_arch(arch)),
                    None => value,
                };
                term(fields.platform, &platform)
            }
            SearchFilter::Tag { value } => term(fields.tags_raw, &value.trim().to_lowercase()),
            SearchFilter::Pushed { from, until } => {
                let bound = |seconds: &Option<i64>, included: bool| match seconds {
                    None => Bound::Unbounded,
                    Some(seconds) => {
                        let term = Term::from_field_date(fields.last_push, DateTime::from_timestamp_secs(*seconds));
                        if included { Bound::Included(term) } else { Bound::Excluded(term) }
                    }
                };
                if from.is_none() && until.is_none() {
                    return Box::new(AllQuery);
                }
                Box::new(RangeQuery::new(bound(from, true), bound(until, false)))
            }
            SearchFilter::Stars { min, max } => u64_range(fields.stars, *min, *max),
            SearchFilter::Size { min, max } => u64_range(fields.size, *min, *max),
            SearchFilter::MultiArch => u64_range(fields.platform_count, Some(2), None),
            SearchFilter::Scanned => term(fields.vuln, "scanned"),
            SearchFilter::Fixable => term(fields.vuln, "fixable"),
            SearchFilter::NoCritical => Box::new(BooleanQuery::new(vec![
                (Occur::Must, term(fields.vuln, "scanned")),
                (Occur::MustNot, term(fields.vuln, "critical")),
            ])),
        }
    }
}

fn u64_range(field: Field, min: Option<u64>, max: Option<u64>) -> Box<dyn Query> {
    if min.is_none() && max.is_none() {
        return Box::new(AllQuery);
    }
    let bound = |value: Option<u64>| match value {
        None => Bound::Unbounded,
        Some(value) => Bound::Included(Term::from_field_u64(field, value)),
    };
    Box::new(RangeQuery::new(bound(min), bound(max)))
}

/// `user:` accepts a DID, a whole handle (`alice.example.com`), the first label of a handle
/// (`alice` matches `alice.example.com` and `alice.test`) or a handle prefix ending in `*`.
fn user_filter(fields: &Fields, value: &str) -> Box<dyn Query> {
    let value = value.trim();
    if value.starts_with("did:") {
        return term(fields.did, value);
    }
    let handle = value.trim_start_matches('@').to_lowercase();
    if let Some(start) = handle.strip_suffix('*') {
        return prefix(fields.handle_raw, start);
    }
    if handle.contains('.') {
        return term(fields.handle_raw, &handle);
    }
    any_of(vec![term(fields.handle_raw, &handle), prefix(fields.handle_raw, &format!("{handle}."))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typo_distance_grows_with_length() {
        assert_eq!(typo_distance(3), 0);
        assert_eq!(typo_distance(4), 1);
        assert_eq!(typo_distance(7), 1);
        assert_eq!(typo_distance(8), 2);
    }
}
