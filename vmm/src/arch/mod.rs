//! x86_64 specifics: the memory layout, boot protocol, initial vCPU state, CPUID and the MP
//! table.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
