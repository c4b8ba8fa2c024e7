//! Checks that a user's path regex is RE2 that Envoy and gRPC accept.
//!
//! An expression the data plane rejects would take the whole route table
//! down with it (a NACK), so it is caught here and reported on the Ingress.
//! regex-syntax parses Rust's dialect, a superset of RE2 in a few places;
//! those extras are refused explicitly.

use regex_syntax::ast::{
    Assertion, AssertionKind, Ast, ClassSet, ClassSetItem, Flag, Flags, FlagsItemKind, GroupKind,
    RepetitionKind, RepetitionRange, parse::Parser,
};

/// RE2's limit on a counted repetition (`{n,m}`).
const MAX_REPEAT: u32 = 1000;

/// `Ok` when `pattern` is valid RE2; otherwise why not.
pub fn check(pattern: &str) -> Result<(), String> {
    let ast = Parser::new()
        .parse(pattern)
        .map_err(|e| e.kind().to_string())?;
    match unsupported(&ast) {
        Some(why) => Err(why.to_owned()),
        None => Ok(()),
    }
}

/// The first construct in `ast` that RE2 lacks.
fn unsupported(ast: &Ast) -> Option<&'static str> {
    match ast {
        Ast::Flags(set) => flags(&set.flags),
        Ast::Assertion(assertion) => assertion_unsupported(assertion),
        Ast::ClassBracketed(class) => class_set(&class.kind),
        Ast::Repetition(repetition) => {
            if matches!(*repetition.ast, Ast::Repetition(_)) {
                return Some("RE2 does not allow a repetition of a repetition, such as \"**\"");
            }
            if let RepetitionKind::Range(range) = &repetition.op.kind {
                let (RepetitionRange::Exactly(n)
                | RepetitionRange::AtLeast(n)
                | RepetitionRange::Bounded(_, n)) = *range;
                if n > MAX_REPEAT {
                    return Some("RE2 allows repetition counts up to 1000");
                }
            }
            unsupported(&repetition.ast)
        }
        Ast::Group(group) => {
            let group_flags = match &group.kind {
                GroupKind::NonCapturing(group_flags) => flags(group_flags),
                _ => None,
            };
            group_flags.or_else(|| unsupported(&group.ast))
        }
        Ast::Alternation(alternation) => alternation.asts.iter().find_map(unsupported),
        Ast::Concat(concat) => concat.asts.iter().find_map(unsupported),
        Ast::Empty(_)
        | Ast::Literal(_)
        | Ast::Dot(_)
        | Ast::ClassUnicode(_)
        | Ast::ClassPerl(_) => None,
    }
}

fn assertion_unsupported(assertion: &Assertion) -> Option<&'static str> {
    match assertion.kind {
        AssertionKind::StartLine
        | AssertionKind::EndLine
        | AssertionKind::StartText
        | AssertionKind::EndText
        | AssertionKind::WordBoundary
        | AssertionKind::NotWordBoundary => None,
        _ => Some("RE2 has no \\b{start}, \\b{end}, \\< or \\> assertions"),
    }
}

/// RE2 flags are i, m, s and U.
fn flags(flags: &Flags) -> Option<&'static str> {
    flags.items.iter().find_map(|item| match item.kind {
        FlagsItemKind::Flag(Flag::Unicode | Flag::CRLF | Flag::IgnoreWhitespace) => {
            Some("RE2 supports only the flags i, m, s and U")
        }
        _ => None,
    })
}

/// RE2 classes are flat: no nested classes, no `&&`, `--` or `~~`.
fn class_set(set: &ClassSet) -> Option<&'static str> {
    let nested = "RE2 does not support nested classes or class set operations";
    match set {
        ClassSet::BinaryOp(_) => Some(nested),
        ClassSet::Item(ClassSetItem::Bracketed(_)) => Some(nested),
        ClassSet::Item(ClassSetItem::Union(union)) => union
            .items
            .iter()
            .any(|item| matches!(item, ClassSetItem::Bracketed(_)))
            .then_some(nested),
        ClassSet::Item(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn accepts_re2() {
        for pattern in [
            "/api/v[0-9]+/.*",
            "(?i)/A(b|c)?",
            "^/x$",
            r"/\d{2,4}",
            r"[[:alpha:]]+",
            r"\pL",
            "a*?",
            "(?P<x>a)",
            "a{1000}",
        ] {
            assert_eq!(check(pattern), Ok(()), "{pattern}");
        }
    }

    #[test]
    fn refuses_what_re2_lacks() {
        for pattern in [
            "(a",
            "[z-a]",
            "a**",
            "a+*",
            "a{1001}",
            "a{2,1001}",
            "(?x)a b",
            "(?u:a)",
            "[a&&b]",
            "[a[b]]",
            r"\<word\>",
            r"\1",
            "(?=a)",
        ] {
            assert!(check(pattern).is_err(), "{pattern} should be refused");
        }
    }
}
