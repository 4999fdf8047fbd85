"""What every stage shares, each idea defined once: Wan's flow-matching conventions (`flow`) and how wanlite
shows things (`display`)."""
