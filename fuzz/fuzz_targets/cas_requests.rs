//! What reaches the CAS from outside its process: a node agent's workload evidence, and the
//! entries of an audit log read back (by `veil audit verify --entries` or a restarted CAS).
//! Never a panic; evidence that parses has a binding, and an entry that parses re-encodes to
//! an entry that parses to the same event.

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_cas::service::AuditEvent;
use veil_cas::workload::Evidence;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Evidence::parse(data) {
        assert!(e.binding().is_ok());
        let json = serde_json::to_vec(&e).unwrap_or_default();
        assert_eq!(Evidence::parse(&json).ok(), Some(e));
    }
    if let Ok(a) = AuditEvent::parse(data)
        && let Ok(entry) = a.to_entry()
    {
        assert_eq!(AuditEvent::parse(&entry).ok(), Some(a));
    }
});
