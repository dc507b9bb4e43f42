//! Profiles' validation, what they ask of the scheduler, and the ARQ state machine.

use super::*;

fn group(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn profile(groups: Vec<BTreeMap<String, String>>) -> DeviceProfile {
    DeviceProfile {
        uuid: "u".into(),
        name: "p".into(),
        description: String::new(),
        groups,
        created_at: 0,
        updated_at: None,
    }
}

#[test]
fn profiles_are_validated_as_cyborg_does() {
    let ok = group(&[
        ("resources:PGPU", "2"),
        ("trait:CUSTOM_GPU_H100", "required"),
        ("accel:min_memory_mb", "40960"),
    ]);
    assert!(validate_profile("gpu-2_h100", "", std::slice::from_ref(&ok)).is_ok());
    let err = |name: &str, g: BTreeMap<String, String>| {
        validate_profile(name, "", &[g]).unwrap_err().to_string()
    };
    assert!(err("bad name!", ok.clone()).contains("^[a-zA-Z0-9-_]+$"));
    assert!(err("p", group(&[("resources:PGPU", "x")])).contains("count"));
    assert!(err("p", group(&[("resources:PGPU", "0")])).contains("at least 1"));
    assert!(err("p", group(&[("resources:WIDGET", "1")])).contains("unknown resource class"));
    assert!(validate_profile("p", "", &[group(&[("resources:CUSTOM_WIDGET", "1")])]).is_ok());
    assert!(
        err(
            "p",
            group(&[("resources:GPU", "1"), ("trait:GPU_X", "required")])
        )
        .contains("CUSTOM_")
    );
    assert!(
        err(
            "p",
            group(&[("resources:GPU", "1"), ("trait:CUSTOM_X", "maybe")])
        )
        .contains("forbidden")
    );
    assert!(
        err("p", group(&[("resources:GPU", "1"), ("color", "red")]))
            .contains("resources:, trait: or accel:")
    );
    assert!(err("p", group(&[("trait:CUSTOM_X", "required")])).contains("no resources"));
    assert!(validate_profile("p", &"d".repeat(256), std::slice::from_ref(&ok)).is_err());
    assert!(validate_profile("p", "", &[]).is_err());
}

#[test]
fn a_profile_becomes_one_gpu_request() {
    let g = group(&[
        ("resources:PGPU", "2"),
        ("trait:CUSTOM_GPU_H100", "required"),
        ("trait:CUSTOM_GPU_T4", "forbidden"),
        ("accel:min_memory_mb", "40960"),
    ]);
    let r = gpu_request(&profile(vec![g.clone(), g])).unwrap();
    assert_eq!(r.count, 4);
    assert_eq!(r.matcher.kind, GpuKind::Whole);
    assert_eq!(r.matcher.required, vec!["CUSTOM_GPU_H100".to_string()]);
    assert_eq!(r.matcher.forbidden, vec!["CUSTOM_GPU_T4".to_string()]);
    assert_eq!(r.matcher.min_memory_mb, 40960);
    let mig = gpu_request(&profile(vec![group(&[
        ("resources:VGPU", "1"),
        ("accel:mig_profile", "1g.10gb"),
    ])]))
    .unwrap();
    assert_eq!(mig.matcher.kind, GpuKind::Mig);
    assert_eq!(mig.matcher.required, vec!["CUSTOM_MIG_1G_10GB".to_string()]);
    // Different groups in one profile, or a class that is not a GPU: refused for servers.
    let mixed = profile(vec![
        group(&[("resources:PGPU", "1")]),
        group(&[("resources:VGPU", "1")]),
    ]);
    assert!(gpu_request(&mixed).is_err());
    assert!(gpu_request(&profile(vec![group(&[("resources:FPGA", "1")])])).is_err());
}

#[test]
fn arq_transitions_are_exactly_the_references() {
    use ArqState::*;
    let all = [
        Initial,
        BindStarted,
        Bound,
        Unbound,
        BindFailed,
        UnbindFailed,
        Deleting,
    ];
    let allowed: &[(ArqState, &[ArqState])] = &[
        (Initial, &[]),
        (BindStarted, &[Initial, Unbound]),
        (Bound, &[BindStarted]),
        (Unbound, &[Initial, BindStarted, Bound, BindFailed]),
        (BindFailed, &[BindStarted, Bound]),
        (UnbindFailed, &[]),
        (
            Deleting,
            &[Initial, BindStarted, Bound, Unbound, BindFailed],
        ),
    ];
    for (to, from) in allowed {
        for f in all {
            assert_eq!(f.can_become(*to), from.contains(&f), "{f:?} -> {to:?}");
        }
    }
    for s in all {
        assert_eq!(ArqState::parse(s.as_str()), Some(s));
    }
    assert!(Bound.resolved() && BindFailed.resolved() && Deleting.resolved());
    assert!(!Initial.resolved() && !BindStarted.resolved() && !Unbound.resolved());
}

#[test]
fn pci_handles_split_the_bus_id() {
    let h = pci_handle("00000000:0C:00.0");
    assert_eq!(h["domain"], "0000");
    assert_eq!(h["bus"], "0c");
    assert_eq!(h["device"], "00");
    assert_eq!(h["function"], "0");
}
