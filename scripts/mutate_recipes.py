"""Apply each mutation of the recipe math the closed-form tests must catch, run the test file that should fail, restore
the source; prints mutation | file | exit code | failing tests. Every row must show failing tests.

    python scripts/mutate_recipes.py            # all (~5 min on 2 cores)
    python scripts/mutate_recipes.py 0 6        # by index

Run from the repository root on a clean tree (it edits students/ and teachers/ in place and restores them).
"""
import subprocess, sys, os
M = [
 ("flipped ODE-step sign (CD)", "students/consistency.py", "x_prev = x_t + per_sample(t_prev - t, x0)", "x_prev = x_t - per_sample(t_prev - t, x0)", "tests/students/test_consistency.py"),
 ("wrong t' = sigma[n+skip+1] (CD, step and target)", "students/consistency.py", "t_prev = self.sigmas[n + skip]", "t_prev = self.sigmas[n + skip + 1]", "tests/students/test_consistency.py"),
 ("wrong t' in the target only: f(x_t', t) (CD)", "students/consistency.py", "target(x_prev, t_prev)", "target(x_prev, t)", "tests/students/test_consistency.py"),
 ("swapped D GAN-loss signs", "students/common.py", "return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()", "return F.softplus(real_logits).mean() + F.softplus(-fake_logits).mean()", "tests/students/test_apt.py"),
 ("swapped G GAN-loss sign", "students/common.py", "return F.softplus(-fake_logits).mean()", "return F.softplus(fake_logits).mean()", "tests/students/test_apt.py"),
 ("swapped real/fake halves in APT's D phase", "students/apt.py", "d_real, d_fake, d_perturbed = logits.chunk(3)", "d_fake, d_real, d_perturbed = logits.chunk(3)", "tests/students/test_apt.py"),
 ("critic target x_hat - eps (DMD2)", "students/dmd.py", "fm = F.mse_loss(v.float(), (eps - fake).float())", "fm = F.mse_loss(v.float(), (fake - eps).float())", "tests/students/test_dmd2.py"),
 ("CFG on the critic (DMD2)", "students/dmd.py", "v_fake = critic(x_t, t)", "v_fake = critic(x_t, t, guidance=self.cfg.guidance)", "tests/students/test_dmd2.py"),
 ("teacher without the recipe's guidance (DMD2)", "students/dmd.py", "teacher(x_t, t, guidance=self.cfg.guidance)", "teacher(x_t, t)", "tests/students/test_dmd2.py"),
 ("flipped jump sign in the consistency sampler", "teachers/samplers.py", "x0 = x - ts[i] * model(", "x0 = x + ts[i] * model(", "tests/students/test_consistency.py"),
 ("critic on the generator's clamped levels (DMD2)", "students/dmd.py", "t = self.critic_levels(b, generator, x0.device)", "t = self.levels_t(b, generator, x0.device)", "tests/students/test_dmd2.py"),
]
only = sys.argv[1:]
for i, (name, path, a, b, test) in enumerate(M):
    if only and str(i) not in only: continue
    src = open(path).read()
    assert src.count(a) == 1, (name, src.count(a))
    open(path, "w").write(src.replace(a, b))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": os.getcwd()})
        failed = [l.split(" ")[1].split("::")[1] for l in r.stdout.splitlines() if l.startswith("FAILED")]
        print(f"{name} | {path} | rc={r.returncode} | failing: {failed}", flush=True)
    finally:
        open(path, "w").write(src)
