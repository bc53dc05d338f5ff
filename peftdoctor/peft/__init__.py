"""What peftdoctor knows about peft: releases and their generated schemas, load predictions, key meanings,
the saved tensor-name grammar, target and pattern matching per release regime."""
