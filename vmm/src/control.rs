//! The event loop's own subscriber: SIGTERM/SIGINT (through a signalfd) and the vmm's stop
//! event that wakes the loop when the VM ends.

use event_manager::{EventOps, Events, MutEventSubscriber};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitNotifier, ExitReason};

const TOKEN_SIGNAL: u32 = 1;
const TOKEN_STOP: u32 = 2;

/// The signals that stop the vmm cleanly.
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Blocks SIGTERM and SIGINT in the calling thread and every thread it starts afterwards,
/// so they are only seen through the signalfd. Call before spawning any thread.
pub fn block_stop_signals() -> nix::Result<()> {
    stop_signals().thread_block()
}

pub struct Control {
    signals: SignalFd,
    stop: EventFd,
    exit: ExitNotifier,
}

impl Control {
    pub fn new(exit: ExitNotifier) -> std::io::Result<Control> {
        let signals = SignalFd::with_flags(
            &stop_signals(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        Ok(Control {
            signals,
            stop: EventFd::new(libc::EFD_NONBLOCK)?,
            exit,
        })
    }

    /// An eventfd that wakes the event loop.
    pub fn stop_evt(&self) -> std::io::Result<EventFd> {
        self.stop.try_clone()
    }
}

impl MutEventSubscriber for Control {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.signals, TOKEN_SIGNAL, EventSet::IN)) {
            log::warn!("watching stop signals: {e:?}");
        }
        if let Err(e) = ops.add(Events::with_data(&self.stop, TOKEN_STOP, EventSet::IN)) {
            log::warn!("watching the stop event: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TOKEN_SIGNAL => {
                while let Ok(Some(info)) = self.signals.read_signal() {
                    self.exit.send(ExitReason::Stopped {
                        signal: info.ssi_signo as i32,
                    });
                }
            }
            TOKEN_STOP => {
                let _ = self.stop.read();
            }
            _ => {}
        }
    }
}
