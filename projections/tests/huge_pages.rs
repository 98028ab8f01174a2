//! `rebuild::HugePagesOff` turns the process's transparent huge pages off while any guard lives
//! and back to what they were after the last one. A test binary of its own: the setting is the
//! process's, and other tests' rebuilds would take guards too.

use atcr_projections::rebuild::HugePagesOff;

#[cfg(target_os = "linux")]
fn huge_pages_disabled() -> bool {
    // SAFETY: PR_GET_THP_DISABLE reads this process's flag; no memory is passed.
    unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
}

#[cfg(target_os = "linux")]
#[test]
fn huge_pages_are_off_while_a_guard_lives_and_as_before_after_the_last() {
    for before in [false, true] {
        // SAFETY: as above, setting the flag to a known state first.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, u64::from(before), 0, 0, 0) };
        assert_eq!(huge_pages_disabled(), before);
        let outer = HugePagesOff::acquire();
        assert!(huge_pages_disabled(), "off while a guard lives (before: {before})");
        let inner = HugePagesOff::acquire();
        drop(outer);
        assert!(huge_pages_disabled(), "still off while another guard lives (before: {before})");
        drop(inner);
        assert_eq!(huge_pages_disabled(), before, "as before once the last guard is gone");
    }
}
