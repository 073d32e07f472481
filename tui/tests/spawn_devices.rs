//! The spawn dialog's device choices: `auto` and each GPU with its free memory on a GPU node,
//! the CPU alone elsewhere, and a GPU node without a CUDA worker says so.
mod common;

use common::{cpu_node, gpu_node};

#[test]
fn a_gpu_node_offers_auto_first_then_cpu_then_each_gpu_with_its_free_memory() {
    let n = gpu_node();
    assert_eq!(n.devices(), ["auto", "cpu", "cuda:0", "cuda:1"]);
    assert_eq!(
        n.device_label("auto"),
        "auto (the GPU with the most free memory)"
    );
    let t = n.telemetry.as_ref().unwrap();
    let g1 = &t.gpus[1];
    let free = rbee_proto::fmt::bytes(g1.mem_total_bytes - g1.mem_used_bytes);
    assert_eq!(
        n.device_label("cuda:1"),
        format!("cuda:1 {} ({free} free)", g1.name)
    );
    assert_eq!(n.device_label("cpu"), "cpu");
}

#[test]
fn a_gpu_node_without_a_cuda_worker_says_so_and_a_cpu_node_offers_the_cpu() {
    let mut n = gpu_node();
    n.telemetry.as_mut().unwrap().backends = vec!["cpu".into()];
    assert_eq!(
        n.device_label("auto"),
        "auto (cpu: no CUDA worker on this node)"
    );
    assert!(
        n.device_label("cuda:0").ends_with(", no CUDA worker"),
        "{}",
        n.device_label("cuda:0")
    );
    assert_eq!(cpu_node().devices(), ["cpu"]);
}
