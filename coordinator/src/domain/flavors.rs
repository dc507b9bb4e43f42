//! Flavors (instance types): named sizes with a price. A server may be created by flavor; every
//! server is reported as the flavor it is scheduled as, the cheapest (then smallest) that fits
//! when none was named. A flavor whose name contains `preemptible` makes spot servers (seed 003:
//! `boost-preemptible-c8m12-gpu-1080-1` is the spot twin of `boost-c8m12-gpu-1080-1`).

use backfill_shared::ServerClass;
use serde::{Deserialize, Serialize};

/// `[[flavors]]` in the coordinator's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flavor {
    pub name: String,
    /// Virtual CPUs (CloudSigma's `smp`).
    pub vcpus: u32,
    /// CPU in MHz (CloudSigma's `cpu`); when absent the flavor does not limit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u64>,
    /// Memory in bytes.
    pub ram: u64,
    /// Scratch disk in bytes.
    #[serde(default)]
    pub scratch: u64,
    /// GPUs per server.
    #[serde(default)]
    pub gpus: u32,
    /// Per hour, in the billing currency.
    #[serde(default)]
    pub price: f64,
    /// Spot capacity. Defaults to whether the name contains `preemptible`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptible: Option<bool>,
}

impl Flavor {
    pub fn is_preemptible(&self) -> bool {
        self.preemptible
            .unwrap_or_else(|| self.name.contains("preemptible"))
    }

    /// Whether a server of this size fits in the flavor.
    pub fn fits(&self, cpu: u64, smp: u32, mem: u64) -> bool {
        smp <= self.vcpus && mem <= self.ram && self.cpu.is_none_or(|c| cpu <= c)
    }
}

/// The configured flavors, checked at load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flavors {
    list: Vec<Flavor>,
}

impl Flavors {
    /// Validates names (unique, DNS-label-like) and sizes; the error names the key and reason.
    pub fn new(list: Vec<Flavor>) -> Result<Flavors, (String, String)> {
        for (i, f) in list.iter().enumerate() {
            let key = format!("flavors[{i}]");
            let ok_name = !f.name.is_empty()
                && f.name.len() <= 64
                && f.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok_name {
                return Err((
                    format!("{key}.name"),
                    "1 to 64 letters, digits, '-', '_' or '.'".into(),
                ));
            }
            if list[..i].iter().any(|o| o.name == f.name) {
                return Err((
                    format!("{key}.name"),
                    format!("{:?} is named twice", f.name),
                ));
            }
            if f.vcpus == 0 || f.ram == 0 {
                return Err((
                    format!("{key}.vcpus"),
                    "vcpus and ram must be more than 0".into(),
                ));
            }
            if !f.price.is_finite() || f.price < 0.0 {
                return Err((format!("{key}.price"), "must be a number, 0 or more".into()));
            }
        }
        Ok(Flavors { list })
    }

    pub fn all(&self) -> &[Flavor] {
        &self.list
    }

    pub fn get(&self, name: &str) -> Option<&Flavor> {
        self.list.iter().find(|f| f.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|f| f.name.as_str()).collect()
    }

    /// Every flavor a server of this size and class may run as, cheapest first (ties: less
    /// RAM, fewer vCPUs, then name). Preemptible is an exact match, as Arvados does: spot and
    /// backfill servers take preemptible flavors, normal servers the others.
    pub fn eligible(&self, class: ServerClass, cpu: u64, smp: u32, mem: u64) -> Vec<&Flavor> {
        let preemptible = class != ServerClass::Normal;
        let mut out: Vec<&Flavor> = self
            .list
            .iter()
            .filter(|f| f.is_preemptible() == preemptible && f.fits(cpu, smp, mem))
            .collect();
        out.sort_by(|a, b| {
            a.price
                .total_cmp(&b.price)
                .then(a.ram.cmp(&b.ram))
                .then(a.vcpus.cmp(&b.vcpus))
                .then(a.name.cmp(&b.name))
        });
        out
    }

    /// The instance type a server is scheduled as: the flavor it named, else the cheapest that
    /// fits, else `<class>-c<smp>m<GiB, rounded up>`.
    pub fn instance_type(
        &self,
        named: Option<&str>,
        class: ServerClass,
        cpu: u64,
        smp: u32,
        mem: u64,
    ) -> String {
        if let Some(name) = named {
            return name.to_owned();
        }
        match self.eligible(class, cpu, smp, mem).first() {
            Some(f) => f.name.clone(),
            None => format!("{}-c{}m{}", class.as_str(), smp, mem.div_ceil(1 << 30)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, vcpus: u32, gib: u64, price: f64) -> Flavor {
        Flavor {
            name: name.into(),
            vcpus,
            cpu: None,
            ram: gib << 30,
            scratch: 0,
            gpus: 0,
            price,
            preemptible: None,
        }
    }

    fn set() -> Flavors {
        Flavors::new(vec![
            f("c8m12", 8, 12, 0.8),
            f("c2m4", 2, 4, 0.2),
            f("c2m4-preemptible", 2, 4, 0.06),
            f("c4m8", 4, 8, 0.4),
        ])
        .unwrap()
    }

    #[test]
    fn the_cheapest_fitting_flavor_of_the_right_kind_is_chosen() {
        let s = set();
        let it = |class, smp, gib: u64| s.instance_type(None, class, 1000, smp, gib << 30);
        assert_eq!(it(ServerClass::Normal, 1, 1), "c2m4");
        assert_eq!(it(ServerClass::Normal, 3, 1), "c4m8");
        assert_eq!(it(ServerClass::Normal, 2, 9), "c8m12");
        assert_eq!(it(ServerClass::Spot, 1, 1), "c2m4-preemptible");
        assert_eq!(it(ServerClass::Backfill, 1, 1), "c2m4-preemptible");
        // Nothing fits: a generated name.
        assert_eq!(it(ServerClass::Normal, 16, 1), "normal-c16m1");
        assert_eq!(it(ServerClass::Spot, 4, 1), "spot-c4m1");
        assert_eq!(
            s.instance_type(Some("c8m12"), ServerClass::Normal, 1, 1, 1),
            "c8m12"
        );
    }

    #[test]
    fn preemptible_comes_from_the_name_unless_set() {
        let mut x = f("boost-preemptible-c8m12-gpu-1080-1", 8, 12, 0.1);
        assert!(x.is_preemptible());
        x.preemptible = Some(false);
        assert!(!x.is_preemptible());
        assert!(!f("boost-c8m12-gpu-1080-1", 8, 12, 0.1).is_preemptible());
    }

    #[test]
    fn bad_flavors_are_refused_with_their_key() {
        let dup = Flavors::new(vec![f("a", 1, 1, 0.0), f("a", 2, 2, 0.0)]).unwrap_err();
        assert_eq!(dup.0, "flavors[1].name");
        let bad = Flavors::new(vec![f("a b", 1, 1, 0.0)]).unwrap_err();
        assert_eq!(bad.0, "flavors[0].name");
        let zero = Flavors::new(vec![f("z", 0, 1, 0.0)]).unwrap_err();
        assert_eq!(zero.0, "flavors[0].vcpus");
        let price = Flavors::new(vec![f("p", 1, 1, -1.0)]).unwrap_err();
        assert_eq!(price.0, "flavors[0].price");
    }
}
