//! Writes small MaxMind DB files (format version 2) for tests: IPv4 networks mapped to a
//! country code, as GeoIP2 Country databases lay it out (`country.iso_code`). Real databases
//! cannot be fetched here; the format is public, and the real reader reads what this writes.

use anyhow::Result;
use std::net::Ipv4Addr;
use std::path::Path;

#[derive(Clone, Copy)]
enum Record {
    Empty,
    Node(u32),
    Data(u32),
}

/// `networks`: (address, prefix length, ISO country code). Networks must not overlap.
pub fn write_country_db(path: &Path, networks: &[(Ipv4Addr, u8, &str)]) -> Result<()> {
    let mut nodes: Vec<[Record; 2]> = vec![[Record::Empty, Record::Empty]];
    let mut data = Vec::new();
    for (addr, prefix, iso) in networks {
        let offset = data.len() as u32;
        encode_map(&mut data, 1);
        encode_string(&mut data, "country");
        encode_map(&mut data, 1);
        encode_string(&mut data, "iso_code");
        encode_string(&mut data, iso);
        let bits = u32::from(*addr);
        let mut node = 0usize;
        for depth in 0..*prefix {
            let bit = ((bits >> (31 - depth)) & 1) as usize;
            if depth + 1 == *prefix {
                nodes[node][bit] = Record::Data(offset);
            } else {
                node = match nodes[node][bit] {
                    Record::Node(next) => next as usize,
                    _ => {
                        nodes.push([Record::Empty, Record::Empty]);
                        let next = nodes.len() - 1;
                        nodes[node][bit] = Record::Node(next as u32);
                        next
                    }
                };
            }
        }
    }
    let node_count = nodes.len() as u32;
    let mut out = Vec::new();
    for node in &nodes {
        for record in node {
            let value = match record {
                Record::Empty => node_count,
                Record::Node(n) => *n,
                Record::Data(offset) => node_count + 16 + offset,
            };
            out.extend_from_slice(&value.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    encode_map(&mut out, 9);
    encode_string(&mut out, "binary_format_major_version");
    encode_uint(&mut out, 5, 2);
    encode_string(&mut out, "binary_format_minor_version");
    encode_uint(&mut out, 5, 0);
    encode_string(&mut out, "build_epoch");
    encode_uint(&mut out, 9, 1_700_000_000);
    encode_string(&mut out, "database_type");
    encode_string(&mut out, "Vigil-Test-Country");
    encode_string(&mut out, "description");
    encode_map(&mut out, 1);
    encode_string(&mut out, "en");
    encode_string(&mut out, "Vigil test data");
    encode_string(&mut out, "ip_version");
    encode_uint(&mut out, 5, 4);
    encode_string(&mut out, "languages");
    out.extend_from_slice(&[1, 11 - 7]);
    encode_string(&mut out, "en");
    encode_string(&mut out, "node_count");
    encode_uint(&mut out, 6, u64::from(node_count));
    encode_string(&mut out, "record_size");
    encode_uint(&mut out, 5, 24);
    std::fs::write(path, out)?;
    Ok(())
}

fn encode_map(out: &mut Vec<u8>, entries: u8) {
    out.push((7 << 5) | entries);
}

fn encode_string(out: &mut Vec<u8>, s: &str) {
    out.push((2 << 5) | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// Unsigned integers: type 5 (uint16), 6 (uint32) or extended 9 (uint64), minimal bytes.
fn encode_uint(out: &mut Vec<u8>, kind: u8, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let body = &bytes[skip..];
    if kind <= 7 {
        out.push((kind << 5) | body.len() as u8);
    } else {
        out.push(body.len() as u8);
        out.push(kind - 7);
    }
    out.extend_from_slice(body);
}
