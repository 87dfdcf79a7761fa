//! `TopicTree<T>`: a tree with one node per topic level, shared by the subscription index
//! (filters stored level by level, `+` and `#` as literal levels) and the retained store
//! (topic names stored level by level).
//!
//! Invariant: a node that holds an empty value (`T::is_empty`) and no children is removed, so
//! the tree's size follows what is stored, not what was ever stored.

use std::collections::HashMap;

/// What a node stores; `is_empty` lets the tree prune nodes that hold nothing.
pub trait NodeValue: Default {
    fn is_empty(&self) -> bool;
}

impl<V> NodeValue for Option<V> {
    fn is_empty(&self) -> bool {
        self.is_none()
    }
}

impl<K, V> NodeValue for HashMap<K, V> {
    fn is_empty(&self) -> bool {
        HashMap::is_empty(self)
    }
}

#[derive(Debug)]
pub struct TopicTree<T> {
    root: Node<T>,
}

#[derive(Debug)]
pub struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    pub value: T,
}

impl<T: NodeValue> Default for Node<T> {
    fn default() -> Self {
        Node { children: HashMap::new(), value: T::default() }
    }
}

impl<T: NodeValue> Default for TopicTree<T> {
    fn default() -> Self {
        TopicTree { root: Node::default() }
    }
}

impl<T: NodeValue> TopicTree<T> {
    /// The value at `path`, creating the nodes on the way.
    pub fn entry(&mut self, path: &str) -> &mut T {
        let mut node = &mut self.root;
        for level in path.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        &mut node.value
    }

    /// Applies `f` to the value at `path` if it exists, then prunes nodes left empty.
    pub fn update<R>(&mut self, path: &str, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let levels: Vec<&str> = path.split('/').collect();
        update_at(&mut self.root, &levels, f)
    }

    /// The value at exactly `path`, if its node exists.
    pub fn get(&self, path: &str) -> Option<&T> {
        let mut node = &self.root;
        for level in path.split('/') {
            node = node.child(level)?;
        }
        Some(&node.value)
    }

    pub fn root(&self) -> &Node<T> {
        &self.root
    }
}

fn update_at<T: NodeValue, R>(node: &mut Node<T>, levels: &[&str], f: impl FnOnce(&mut T) -> R) -> Option<R> {
    let Some((first, rest)) = levels.split_first() else { return Some(f(&mut node.value)) };
    let child = node.children.get_mut(*first)?;
    let result = update_at(child, rest, f);
    if child.value.is_empty() && child.children.is_empty() {
        node.children.remove(*first);
    }
    result
}

impl<T> Node<T> {
    pub fn child(&self, level: &str) -> Option<&Node<T>> {
        self.children.get(level)
    }

    pub fn children(&self) -> impl Iterator<Item = (&str, &Node<T>)> + '_ {
        self.children.iter().map(|(k, v)| (&**k, v))
    }
}

/// Calls `emit` with the value of every filter node that matches `topic` (subscription index).
/// Filters beginning with a wildcard do not match `$` topics [MQTT-4.7.2-1].
pub fn for_each_matching_filter<'a, T>(tree: &'a TopicTree<T>, topic: &str, emit: &mut impl FnMut(&'a T)) {
    let levels: Vec<&str> = topic.split('/').collect();
    let dollar = topic.starts_with('$');
    walk_filters(&tree.root, &levels, !dollar, emit);
}

fn walk_filters<'a, T>(
    node: &'a Node<T>,
    levels: &[&str],
    wildcards_allowed: bool,
    emit: &mut impl FnMut(&'a T),
) {
    if wildcards_allowed {
        // "a/#" matches "a" and everything below it [MQTT-4.7.1-2].
        if let Some(hash) = node.child("#") {
            emit(&hash.value);
        }
    }
    let Some((first, rest)) = levels.split_first() else {
        emit(&node.value);
        return;
    };
    if wildcards_allowed {
        if let Some(plus) = node.child("+") {
            walk_filters(plus, rest, true, emit);
        }
    }
    if let Some(exact) = node.child(first) {
        walk_filters(exact, rest, true, emit);
    }
}

/// Calls `emit` with the value of every topic node matched by `filter` (retained store).
pub fn for_each_matching_topic<'a, T>(tree: &'a TopicTree<T>, filter: &str, emit: &mut impl FnMut(&'a T)) {
    let levels: Vec<&str> = filter.split('/').collect();
    walk_topics(&tree.root, &levels, true, emit);
}

fn walk_topics<'a, T>(node: &'a Node<T>, filter: &[&str], at_root: bool, emit: &mut impl FnMut(&'a T)) {
    let Some((first, rest)) = filter.split_first() else {
        emit(&node.value);
        return;
    };
    // A wildcard in the first level skips `$` topics [MQTT-4.7.2-1].
    let visible = |level: &str| !(at_root && level.starts_with('$'));
    match *first {
        "#" => {
            if !at_root {
                emit(&node.value);
            }
            for (level, child) in node.children() {
                if visible(level) {
                    walk_all(child, emit);
                }
            }
        }
        "+" => {
            for (level, child) in node.children() {
                if visible(level) {
                    walk_topics(child, rest, false, emit);
                }
            }
        }
        level => {
            if let Some(child) = node.child(level) {
                walk_topics(child, rest, false, emit);
            }
        }
    }
}

/// Calls `emit` with the path and value of every node (the admin API's listings; it visits the
/// whole tree).
pub fn for_each_entry<'a, T>(tree: &'a TopicTree<T>, emit: &mut impl FnMut(&str, &'a T)) {
    let mut path = String::new();
    for (level, child) in tree.root.children() {
        walk_paths(child, level, true, &mut path, emit);
    }
}

fn walk_paths<'a, T>(
    node: &'a Node<T>,
    level: &str,
    first: bool,
    path: &mut String,
    emit: &mut impl FnMut(&str, &'a T),
) {
    let parent_len = path.len();
    // Levels may be empty ("/a" is "" then "a"): the separator depends on depth, not length.
    if !first {
        path.push('/');
    }
    path.push_str(level);
    emit(path, &node.value);
    for (level, child) in node.children() {
        walk_paths(child, level, false, path, emit);
    }
    path.truncate(parent_len);
}

fn walk_all<'a, T>(node: &'a Node<T>, emit: &mut impl FnMut(&'a T)) {
    emit(&node.value);
    for (_, child) in node.children() {
        walk_all(child, emit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::topic::filter_matches;

    fn filters_matching(filters: &[&str], topic: &str) -> Vec<String> {
        let mut tree: TopicTree<Option<String>> = TopicTree::default();
        for f in filters {
            *tree.entry(f) = Some(f.to_string());
        }
        let mut found = Vec::new();
        for_each_matching_filter(&tree, topic, &mut |v| found.extend(v.clone()));
        found.sort();
        found
    }

    fn topics_matching(topics: &[&str], filter: &str) -> Vec<String> {
        let mut tree: TopicTree<Option<String>> = TopicTree::default();
        for t in topics {
            *tree.entry(t) = Some(t.to_string());
        }
        let mut found = Vec::new();
        for_each_matching_topic(&tree, filter, &mut |v| found.extend(v.clone()));
        found.sort();
        found
    }

    const FILTERS: &[&str] = &[
        "#", "+", "+/+", "/+", "a", "a/#", "a/+", "a/b", "a/+/c", "a/b/#", "+/b", "$SYS/#", "$SYS/+", "+/#",
        "a//c", "a/+/+", "/#",
    ];
    const TOPICS: &[&str] =
        &["a", "a/b", "a/b/c", "a//c", "/", "/x", "b", "$SYS", "$SYS/x", "$SYS/x/y", "a/b/c/d", "x/b", ""];

    #[test]
    fn filter_walk_agrees_with_reference_matcher() {
        for topic in TOPICS.iter().filter(|t| !t.is_empty()) {
            let mut expected: Vec<String> =
                FILTERS.iter().filter(|f| filter_matches(f, topic)).map(|f| f.to_string()).collect();
            expected.sort();
            assert_eq!(filters_matching(FILTERS, topic), expected, "topic {topic:?}");
        }
    }

    #[test]
    fn topic_walk_agrees_with_reference_matcher() {
        let topics: Vec<&str> = TOPICS.iter().copied().filter(|t| !t.is_empty()).collect();
        for filter in FILTERS {
            let mut expected: Vec<String> =
                topics.iter().filter(|t| filter_matches(filter, t)).map(|t| t.to_string()).collect();
            expected.sort();
            assert_eq!(topics_matching(&topics, filter), expected, "filter {filter:?}");
        }
    }

    #[test]
    fn every_entry_is_visited_with_its_path() {
        let mut tree: TopicTree<Option<u8>> = TopicTree::default();
        for (i, path) in ["a/b", "/x", "a/+/#", "a"].iter().enumerate() {
            *tree.entry(path) = Some(i as u8);
        }
        let mut found = Vec::new();
        for_each_entry(&tree, &mut |path, value| {
            if let Some(v) = value {
                found.push((path.to_owned(), *v));
            }
        });
        found.sort();
        let expected = [("/x", 1), ("a", 3), ("a/+/#", 2), ("a/b", 0)].map(|(p, v)| (p.to_owned(), v));
        assert_eq!(found, expected);
    }

    #[test]
    fn removing_values_prunes_empty_nodes() {
        let mut tree: TopicTree<Option<u8>> = TopicTree::default();
        *tree.entry("a/b/c") = Some(1);
        *tree.entry("a/x") = Some(2);
        assert_eq!(tree.update("a/b/c", |v| v.take()), Some(Some(1)));
        assert!(tree.root().child("a").unwrap().child("b").is_none());
        assert_eq!(tree.update("a/x", |v| v.take()), Some(Some(2)));
        assert!(tree.root().child("a").is_none());
        assert_eq!(tree.update("nope", |v| v.take()), None);
    }
}
