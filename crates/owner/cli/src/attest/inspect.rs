//! `veil attest inspect`: recognise an evidence file and print what it holds.

use std::path::Path;

use anyhow::anyhow;
use serde::Serialize;
use veil_attest_azure as az;
use veil_attest_core::x509::{Certificate, Crl};
use veil_attest_dcap as dcap;
use veil_attest_snp as snp;
use veil_attest_tpm as tpm;

use super::read;

fn show(title: &str, v: &impl Serialize) -> anyhow::Result<()> {
    println!("{title}");
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn inspect(path: &Path) -> anyhow::Result<()> {
    let bytes = read(path)?;
    if bytes.starts_with(b"HCLA") {
        let h = az::HclReport::parse(&bytes)?;
        println!(
            "Azure HCL report, version {}, {:?} hardware report",
            h.version, h.report_type
        );
        println!(
            "  variable data ({:?}): {}",
            h.hash_type,
            String::from_utf8_lossy(&h.var_data)
        );
        println!("  HCLAkPub: {}", h.ak.kind());
        if let Ok(r) = snp::AttestationReport::parse(&h.hw_report) {
            show("  SEV-SNP report:", &r)?;
        }
        return Ok(());
    }
    if bytes.len() == snp::report::REPORT_LEN
        && let Ok(r) = snp::AttestationReport::parse(&bytes)
    {
        return show("AMD SEV-SNP attestation report", &r);
    }
    if let Ok(q) = dcap::Quote::parse(&bytes) {
        let kind = if q.is_tdx() {
            "Intel TDX quote"
        } else {
            "Intel SGX quote"
        };
        return show(&format!("{kind}, version {}", q.header.version), &q);
    }
    if let Ok(q) = tpm::Quote::parse(&bytes) {
        return show("TPM 2.0 quote (TPMS_ATTEST)", &q);
    }
    if let Ok(log) = tpm::EventLog::parse(&bytes)
        && !log.events.is_empty()
    {
        println!(
            "TCG event log, banks {:?}, {} events",
            log.banks,
            log.events.len()
        );
        for e in &log.events {
            let digests: Vec<String> = e
                .digests
                .iter()
                .map(|(b, d)| format!("{b}:{}", hex::encode(d)))
                .collect();
            println!(
                "  pcr {:>2}  {:<34} {}",
                e.pcr,
                e.type_name(),
                digests.join(" ")
            );
        }
        for ((bank, pcr), v) in log.replay() {
            println!("  replayed {bank}:{pcr} = {}", hex::encode(v));
        }
        return Ok(());
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return inspect_json(&bytes);
    }
    if let Ok(certs) = Certificate::parse_many(&bytes, "certificate") {
        for c in certs {
            println!("X.509 certificate");
            println!("  subject      {}", c.subject());
            println!("  issuer       {}", c.issuer());
            println!("  serial       {}", hex::encode(c.serial()));
            println!("  valid        {} .. {}", c.not_before(), c.not_after());
            println!("  sha256       {}", hex::encode(c.fingerprint()));
            if let Ok(k) = c.public_key() {
                println!("  key          {}", k.kind());
            }
            for e in c.extensions() {
                let crit = if e.critical { " (critical)" } else { "" };
                println!("  ext {}{crit}  {}", e.oid, hex::encode(&e.value));
            }
        }
        return Ok(());
    }
    if let Ok(crl) = Crl::parse(&bytes, "CRL") {
        println!("X.509 CRL");
        println!("  issuer       {}", crl.issuer());
        println!(
            "  valid        {} .. {:?}",
            crl.this_update(),
            crl.next_update().map(|t| t.to_string())
        );
        println!("  revoked      {} certificates", crl.revoked_count());
        return Ok(());
    }
    if let Ok(p) = tpm::Public::parse(&bytes) {
        println!("TPM public area (TPMT_PUBLIC)");
        println!("  key          {}", p.key.kind());
        println!("  attributes   {:#010x}", p.attributes);
        println!("  name         {}", hex::encode(&p.name));
        return Ok(());
    }
    if let Ok(entries) = snp::cert_table::parse_cert_table(&bytes)
        && !entries.is_empty()
    {
        println!("SEV-SNP certificate table");
        for e in entries {
            println!("  {:?} {} ({} bytes)", e.kind, e.guid, e.data.len());
        }
        return Ok(());
    }
    Err(anyhow!(
        "{}: not a format Veil recognises (SNP report, DCAP quote, TPMS_ATTEST, TPMT_PUBLIC, HCL report, TCG event log, evidence or collateral JSON, certificate, CRL, SNP certificate table)",
        path.display()
    ))
}

const NULL: serde_json::Value = serde_json::Value::Null;

fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    v.get(key).unwrap_or(&NULL)
}

fn inspect_json(bytes: &[u8]) -> anyhow::Result<()> {
    if let Ok(ev) = az::AzureEvidence::from_json(bytes) {
        println!("Azure CVM evidence JSON, version {}", ev.version);
        println!("  HCL report   {} bytes", ev.hcl_report.len());
        println!(
            "  vTPM quote   {} bytes, {} PCRs",
            ev.tpm_quote.message.len(),
            ev.tpm_quote.pcrs.len()
        );
        if let Some(v) = &ev.vcek {
            println!("  VCEK         {} bytes", v.len());
        }
        if let Some(q) = &ev.td_quote {
            println!("  TD quote     {} bytes", q.len());
        }
        if let Ok(h) = az::HclReport::parse(&ev.hcl_report) {
            println!("  variable data: {}", String::from_utf8_lossy(&h.var_data));
        }
        return Ok(());
    }
    if let Ok(c) = dcap::Collateral::from_json(bytes) {
        println!("DCAP collateral JSON");
        let tcb: serde_json::Value = serde_json::from_str(&c.tcb_info.body)?;
        let qe: serde_json::Value = serde_json::from_str(&c.qe_identity.body)?;
        for (name, v) in [("TCB info", &tcb), ("QE identity", &qe)] {
            println!(
                "  {name:<12} id {} version {} issued {} next update {}",
                field(v, "id"),
                field(v, "version"),
                field(v, "issueDate"),
                field(v, "nextUpdate")
            );
        }
        println!("  FMSPC        {}", field(&tcb, "fmspc"));
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(bytes)?;
    if v.get("ak_public").is_some() && v.get("tpm_quote").is_some() {
        println!("TPM evidence JSON (ak_public + tpm_quote)");
    } else {
        println!("JSON document (not a known evidence format)");
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
