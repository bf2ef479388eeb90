"""Run train.py's command line in a rank of paddle.distributed.launch, with per-rank test
conditions that a real launch meets on several machines:

    --data_path_per_rank A,B    rank r reads the r-th data folder (different data on each node)
    --die_on_rank R             rank R is killed (SIGKILL) in the middle of its fit
"""
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv):
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    args, i = [], 0
    while i < len(argv):
        if argv[i] == "--data_path_per_rank":
            args += ["--data_path", argv[i + 1].split(",")[rank]]
            i += 2
        elif argv[i] == "--die_on_rank":
            if int(argv[i + 1]) == rank:
                from models.gaussian import PatchGaussian
                original = PatchGaussian.partial_fit

                def dying(self, y):
                    if self.n_samples_seen_ > 0:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return original(self, y)
                PatchGaussian.partial_fit = dying
            i += 2
        else:
            args.append(argv[i])
            i += 1
    import train
    from utils import run_cli
    sys.argv = ["train.py"] + args
    return run_cli(train.main, train.get_args, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
