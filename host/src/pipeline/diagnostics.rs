//! Diagnostics kept as they change: each unit of the pipeline (a root's
//! translation, a listener, a virtual host, a raw resource, a Secret) owns
//! its list; the whole set is a persistent map, so a round updates only the
//! units it touched and handing the set to readers is O(1).

use std::collections::HashMap;

use crate::ir;
use crate::store::{NamespacedName, ObjectKey};
use crate::translate::merge::{RawKey, VhostKey};

/// What a diagnostic comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Unit {
    Root(ObjectKey),
    Listener(String),
    Vhost(VhostKey),
    /// The policy chain's findings on a host.
    Policy(VhostKey),
    Raw(RawKey),
    Secret(NamespacedName),
}

use crate::ir::DiagnosticSet;

#[derive(Default)]
pub(super) struct Diagnostics {
    by_unit: HashMap<Unit, Vec<ir::Diagnostic>>,
    all: DiagnosticSet,
}

impl Diagnostics {
    /// Replaces what `unit` reports.
    pub fn set(&mut self, unit: Unit, diagnostics: Vec<ir::Diagnostic>) {
        let old = if diagnostics.is_empty() {
            self.by_unit.remove(&unit)
        } else {
            if self.by_unit.get(&unit) == Some(&diagnostics) {
                return;
            }
            self.by_unit.insert(unit, diagnostics.clone())
        };
        for d in old.into_iter().flatten() {
            if let Some(n) = self.all.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    self.all.remove(&d);
                }
            }
        }
        for d in diagnostics {
            *self.all.entry(d).or_insert(0) += 1;
        }
    }

    pub fn all(&self) -> &DiagnosticSet {
        &self.all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(name: &str, reason: &str) -> ir::Diagnostic {
        ir::Diagnostic::error(ir::ObjectRef::new("Ingress", "ns", name), reason, "m")
    }

    #[test]
    fn units_replace_their_own_and_shared_findings_count_once() {
        let mut d = Diagnostics::default();
        let a = Unit::Listener("a".into());
        let b = Unit::Listener("b".into());
        d.set(a.clone(), vec![diag("x", "R"), diag("y", "R")]);
        d.set(b.clone(), vec![diag("x", "R")]);
        assert_eq!(d.all().len(), 2);
        assert_eq!(d.all().get(&diag("x", "R")), Some(&2));
        d.set(a.clone(), vec![diag("z", "R")]);
        let names: Vec<_> = d.all().keys().map(|d| d.object.name.clone()).collect();
        assert_eq!(names, ["x", "z"]);
        d.set(b, vec![]);
        d.set(a, vec![]);
        assert!(d.all().is_empty());
    }
}
