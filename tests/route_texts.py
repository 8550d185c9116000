"""Texts of the routing tests' synthetic domains (tests/route)."""

ANIMALS = ["the cat sat on the mat and the dog sat on the log",
           "a bird flew over the green tree by the river",
           "the cow ate the grass in the field near the barn",
           "a fox ran past the old fence at night",
           "the horse drank from the river near the barn",
           "a dog and a cat slept by the old tree"]
CODE = ["def add ( x , y ) : return x + y",
        "for i in range ( 10 ) : print ( i )",
        "import os ; path = os . getcwd ( )",
        "class point : def init ( self ) : pass",
        "while x < 10 : x = x + 1",
        "return [ i for i in range ( n ) if i ]"]
SHOP = ["buy two apples and three pears at the market",
        "the price of milk rose by ten cents today",
        "pay for bread and cheese at the counter"]
SENTIMENT = (["good great fine nice", "great nice good", "nice fine great good", "fine good nice"],
             ["bad awful poor sad", "awful sad bad", "poor bad sad awful", "sad poor awful"])
TOPIC = (["cat dog bird cow", "dog fox horse", "bird cow cat"], ["apples milk bread", "cheese pears milk",
                                                                "bread apples cheese"])
