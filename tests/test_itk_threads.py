"""ITK's process-wide thread default while block tasks run (lazyreg.registration.itk_threads)."""

from __future__ import annotations

import threading

import SimpleITK as sitk

from lazyreg.registration.itk_threads import single_threaded_itk


def test_overlapping_users_keep_one_thread_until_the_last_leaves():
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    inside, leave_a, seen = threading.Event(), threading.Event(), []

    def a():
        with single_threaded_itk():
            inside.set()
            leave_a.wait(5)

    t = threading.Thread(target=a)
    t.start()
    inside.wait(5)
    with single_threaded_itk():
        seen.append(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
        leave_a.set()
        t.join(5)
        seen.append(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())  # a left, this one is inside
    seen.append(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    assert seen == [1, 1, before]


def test_the_default_is_restored_after_an_error():
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        with single_threaded_itk():
            raise ValueError("inside")
    except ValueError:
        pass
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
