use super::*;
use crate::devices::virtio::test_utils::{at_least, capture_logs, desc, mem, queue_with};

#[test]
fn chains_come_out_in_order() {
    let m = mem();
    let (_vq, q) = queue_with(&m, 16, &[desc(0x1000, 8, 0, 0), desc(0x2000, 8, 0, 0)]);
    let mut q = GuestQueue::new(q, "test queue");
    assert_eq!(q.pop(&m).unwrap().head_index(), 0);
    assert_eq!(q.pop(&m).unwrap().head_index(), 1);
    assert!(q.pop(&m).is_none());
    assert!(!q.is_broken());
}

#[test]
fn a_runaway_avail_index_breaks_the_queue_once() {
    let m = mem();
    let (vq, q) = queue_with(&m, 16, &[]);
    let mut q = GuestQueue::new(q, "test queue");
    vq.avail().idx().store(17);
    let ((), logged) = capture_logs(|| {
        for _ in 0..1000 {
            assert!(q.pop(&m).is_none());
        }
    });
    assert!(q.is_broken());
    let errors = at_least(&logged, log::Level::Warn);
    assert_eq!(errors.len(), 1, "{logged:?}");
    assert!(errors[0].contains("test queue"), "{errors:?}");
    // Broken for good: even a sane index with a chain behind it is not read.
    vq.add_desc_chains(&[desc(0x1000, 8, 0, 0)], 0).unwrap();
    vq.avail().idx().store(1);
    assert!(q.pop(&m).is_none());
}

#[test]
fn heads_outside_the_table_are_refused_without_a_log_line() {
    let m = mem();
    let (vq, q) = queue_with(&m, 16, &[desc(0x1000, 8, 0, 0)]);
    let mut q = GuestQueue::new(q, "test queue");
    let ((), logged) = capture_logs(|| {
        for head in [16, 17, 1000, u16::MAX] {
            for _ in 0..100 {
                assert!(q.add_used(&m, head, 0).is_err());
            }
        }
    });
    assert!(logged.is_empty(), "{logged:?}");
    assert_eq!(vq.used().idx().load(), 0);
    q.add_used(&m, 0, 8).unwrap();
    assert_eq!(vq.used().idx().load(), 1);
}
